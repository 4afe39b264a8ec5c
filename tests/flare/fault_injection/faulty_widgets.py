"""Widgets with injected attack faults, shipped as a job's custom code by the fault tests.

Each class injects one fault; combine them by inheritance (``class Both(A, B)``): each
``_run_attack`` handles its own case and defers to the next class in the MRO.
"""

from __future__ import annotations

import time

import torch

from nvflare_gia.flare.widget import GradientInversionWidget

HANG_SECONDS = 600.0
"""How long a hung attack blocks: far past any ``max_seconds`` or ``end_run_wait_s`` of the tests."""


class RaisingAttackWidget(GradientInversionWidget):
    """Every attack raises, as a bug inside the attack engine would."""

    def _run_attack(self, target):
        raise RuntimeError(f"injected attack failure for {target.client}")


class HangingAttackWidget(GradientInversionWidget):
    """The attack on site-1 from round 1 on blocks for ``HANG_SECONDS``, ignoring ``max_seconds``
    (a solver stuck in a native call that never checks its budget)."""

    def _run_attack(self, target):
        if target.client == "site-1" and target.round >= 1:
            time.sleep(HANG_SECONDS)
        return super()._run_attack(target)


class OutOfMemoryAttackWidget(GradientInversionWidget):
    """Every attack on site-2 runs out of accelerator memory."""

    def _run_attack(self, target):
        if target.client == "site-2":
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 20.00 GiB (injected for {target.client} round {target.round})"
            )
        return super()._run_attack(target)


class HangingAndOutOfMemoryWidget(HangingAttackWidget, OutOfMemoryAttackWidget):
    """site-1 hangs from round 1 on, site-2 runs out of memory, every other attack runs for real."""
