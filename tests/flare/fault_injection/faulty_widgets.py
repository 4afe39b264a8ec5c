"""Widgets with injected attack faults, shipped as a job's custom code by the fault tests."""

from __future__ import annotations

from nvflare_gia.flare.widget import GradientInversionWidget


class RaisingAttackWidget(GradientInversionWidget):
    """Every attack raises, as a bug inside the attack engine would."""

    def _run_attack(self, target):
        raise RuntimeError(f"injected attack failure for {target.client}")
