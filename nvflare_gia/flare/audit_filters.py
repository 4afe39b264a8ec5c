"""FLARE task-result filters that audit the client's own outgoing update (fail closed).

* :class:`LeakageGateFilter` — put it **last** in the client's ``task_result_filters`` chain: it
  runs the attack on the update as it will leave the site (after the defenses) against the cached
  global model, scores the reconstruction against the site's own training images (read through
  the job's data spec, ``gia_data.json``, as the training script and the data-aware defenses do),
  and raises when the configured metric is above ``threshold`` (or, with ``block_lower_bound``,
  when the audit is only a lower bound), so FLARE replies ``TASK_RESULT_FILTER_ERROR`` and the
  update never leaves. It records ``meta["gia_gate"]`` (``metric``, ``prior``, ``value``,
  ``threshold``, ``passed``, ``lower_bound``, ``seconds``, ``round``, ``status``) either way.
* :class:`CalibratedDefenseFilter` — a defense filter (like those of :mod:`nvflare_gia.flare.filters`)
  wrapping :class:`nvflare_gia.defenses.calibrated.CalibratedDefense`: each round it applies the
  weakest strength of a noise defense whose self-audited leakage meets ``target``, and records
  ``meta["gia_defense"]`` and ``meta["gia_calibration"]`` (chosen strength, audited value, tries,
  seconds). It must be the first defense of the chain.

Both need ``meta["gia_training"]`` (written by ``nvflare_gia.flare.client_train``) and the job's
data spec; both block the result when the audit cannot run (no cached global model, no data spec,
a malformed update, data that disagrees with the meta). Clients with more than ``max_images``
local images are not audited (``status: skipped``; the gate passes them, the calibrated filter
applies its ``min_strength``), as the server-side widget skips them.

FedAvg's default error policy aborts the run when a client's result is an error. Jobs that use
these filters set ``"ignore_result_error": true`` on the workflow so a blocked client is left out
of that round's aggregate (see ``jobs/fedavg_cxr_gate`` and ``jobs/fedavg_cxr_calibrated``).

Example (``config_fed_client.json``)::

    {"tasks": ["train"], "filters": [
        {"path": "nvflare_gia.flare.filters.GaussianNoiseFilter", "args": {}},
        {"path": "nvflare_gia.flare.audit_filters.LeakageGateFilter", "args": {"threshold": 0.0}}]}
"""

from __future__ import annotations

import time
from typing import Any

from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.event_type import EventType
from nvflare.apis.filter import ContentBlockedException
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from nvflare_gia.attack import ThreatModel
from nvflare_gia.defenses._update import validate_update
from nvflare_gia.defenses.base import Defense
from nvflare_gia.defenses.calibrated import CALIBRATION_PARAM, CalibratedDefense, CalibratedDefenseConfig
from nvflare_gia.defenses.self_audit import LeakageGate, LeakageGateConfig, client_batch_order
from nvflare_gia.errors import DataError
from nvflare_gia.flare.client_train import DEFAULT_DATA_SPEC_FILE
from nvflare_gia.flare.filters import (
    GIA_DEFENSE_META_KEY,
    DefenseFilter,
    _non_float_stand_ins,
    _subtract,
)

__all__ = ["GIA_GATE_META_KEY", "GIA_CALIBRATION_META_KEY", "LeakageGateFilter", "CalibratedDefenseFilter"]

#: DXO meta key of the gate's record.
GIA_GATE_META_KEY = "gia_gate"
#: DXO meta key of the calibration's record.
GIA_CALIBRATION_META_KEY = "gia_calibration"


class LeakageGateFilter(DefenseFilter):
    """Block an outgoing update whose self-audited leakage is above ``threshold`` (put it last).

    It changes nothing in the update; it adds ``meta["gia_gate"]``. See the module docstring.

    Args:
        metric: see :class:`nvflare_gia.defenses.self_audit.LeakageGateConfig`.
        threshold: see :class:`~nvflare_gia.defenses.self_audit.LeakageGateConfig`.
        every_n_rounds: see :class:`~nvflare_gia.defenses.self_audit.LeakageGateConfig`.
        confirmations: see :class:`~nvflare_gia.defenses.self_audit.LeakageGateConfig`.
        block_lower_bound: see :class:`~nvflare_gia.defenses.self_audit.LeakageGateConfig`; the
            true images are scored in the batches the client drew (``nvflare_gia.training``'s
            shuffle from the reported seed and the round).
        max_images: see :class:`~nvflare_gia.defenses.self_audit.LeakageGateConfig`.
        max_seconds: attack budget of the audit, see :class:`~nvflare_gia.defenses.self_audit.LeakageGateConfig`.
        max_iterations: see :class:`~nvflare_gia.defenses.self_audit.LeakageGateConfig`.
        restarts: see :class:`~nvflare_gia.defenses.self_audit.LeakageGateConfig`.
        seed: the attack's seed, see :class:`~nvflare_gia.defenses.self_audit.LeakageGateConfig`.
        device: see :class:`~nvflare_gia.defenses.self_audit.LeakageGateConfig`.
        num_threads: see :class:`~nvflare_gia.defenses.self_audit.LeakageGateConfig`.
        parallel_restarts: see :class:`~nvflare_gia.defenses.self_audit.LeakageGateConfig`.
        prior: the audit attack's prior, see :class:`~nvflare_gia.defenses.self_audit.SelfAuditConfig`;
            use the server widget's ``prior`` (the jobs use ``val_retrieval``). ``val_mean`` and
            ``val_retrieval`` read the validation split of the job's data spec.
        data_spec: the job's ``DataSpec`` file in the app's config folder (or a path or JSON text).

    Raises:
        TypeError, ConfigError: for invalid arguments (at construction, i.e. at deployment).
    """

    _needs_data = True

    def __init__(
        self,
        metric: str = LeakageGateConfig.metric,
        threshold: float = LeakageGateConfig.threshold,
        every_n_rounds: int = LeakageGateConfig.every_n_rounds,
        confirmations: int = LeakageGateConfig.confirmations,
        block_lower_bound: bool = LeakageGateConfig.block_lower_bound,
        max_images: int = LeakageGateConfig.max_images,
        max_seconds: float | None = LeakageGateConfig.max_seconds,
        max_iterations: int = LeakageGateConfig.max_iterations,
        restarts: int = LeakageGateConfig.restarts,
        seed: int = LeakageGateConfig.seed,
        device: str = LeakageGateConfig.device,
        num_threads: int | None = LeakageGateConfig.num_threads,
        parallel_restarts: int = LeakageGateConfig.parallel_restarts,
        prior: str = LeakageGateConfig.prior,
        data_spec: str = DEFAULT_DATA_SPEC_FILE,
    ) -> None:
        self.metric = metric
        self.threshold = threshold
        self.every_n_rounds = every_n_rounds
        self.confirmations = confirmations
        self.block_lower_bound = block_lower_bound
        self.max_images = max_images
        self.max_seconds = max_seconds
        self.max_iterations = max_iterations
        self.restarts = restarts
        self.seed = seed
        self.device = device
        self.num_threads = num_threads
        self.parallel_restarts = parallel_restarts
        self.prior = prior
        self.data_spec = data_spec
        self._gate = LeakageGate(
            LeakageGateConfig(
                metric=metric, threshold=threshold, every_n_rounds=every_n_rounds, confirmations=confirmations,
                block_lower_bound=block_lower_bound, max_images=max_images,
                max_seconds=max_seconds, max_iterations=max_iterations, restarts=restarts, seed=seed,
                device=device, num_threads=num_threads, parallel_restarts=parallel_restarts, prior=prior,
            )
        )
        super().__init__(data_spec)

    def _build_defense(self) -> Defense | None:  # the gate applies no defense
        return None

    def _needs_val_images(self) -> bool:
        return self._gate.config.prior != "flat"

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Reset at ``START_RUN``; cache the received global model at ``BEFORE_TASK_EXECUTION``.

        (The attack's seed is not secret: unlike a noise seed it reveals nothing, so no warning.)
        """
        if event_type == EventType.START_RUN:
            self._reset()
            self._gate.reset()
        elif event_type == EventType.BEFORE_TASK_EXECUTION:
            self._cache_global_model(fl_ctx)
        DXOFilter.handle_event(self, event_type, fl_ctx)

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO:
        """Audit ``dxo``'s update; return it unchanged (meta aside) or raise ``ContentBlockedException``."""
        owner = type(self).__name__
        started = time.perf_counter()
        round_index = self._round(shareable)
        if not self._gate.take_turn():
            record = self._gate.skip(round_index)
        else:
            global_state = self._global_for(fl_ctx, required=True)
            data = dxo.data
            validate_update(data, global_state, owner=owner)
            stand_ins = _non_float_stand_ins(data, global_state)
            if stand_ins:
                raise DataError(f"{owner}: the update does not fit the global model: " + "; ".join(stand_ins) + ".")
            update = {k: _subtract(v, global_state[k]) for k, v in data.items()} if dxo.data_kind == DataKind.WEIGHTS else data
            context = self._context(dxo, shareable, fl_ctx)  # the site's own data, checked against the meta
            threat = ThreatModel.from_meta(dxo.meta or {}, networks=[context.model])  # the site's own training meta
            record = self._gate.audit(
                global_state, update, threat, context.images, context.labels, round_index=round_index,
                val_images=context.val_images, batch_order=client_batch_order(context),
            )
        record["seconds"] = float(time.perf_counter() - started)
        dxo.set_meta_prop(GIA_GATE_META_KEY, record)
        if not record["passed"]:
            verdict = (
                f"> threshold {record['threshold']}"
                if record["value"] > record["threshold"]
                else f"<= threshold {record['threshold']}, but only a lower bound: the true images fit the update far better "
                "than the reconstruction (block_lower_bound)"
            )
            message = f"{owner}: blocked the task result of round {round_index}: self-audited {record['metric']} = {record['value']:.4f} {verdict}"
            self.log_error(fl_ctx, message)
            raise ContentBlockedException(message)
        if record["status"] == "skipped":
            self.log_info(fl_ctx, f"{owner}: round {round_index} passed without audit ({record['reason']})")
        else:
            self.log_info(
                fl_ctx,
                f"{owner}: round {round_index} passed: {record['metric']} = {record['value']:.4f} <= {record['threshold']} "
                f"({record['seconds']:.1f} s)",
            )
        return dxo


class CalibratedDefenseFilter(DefenseFilter):
    """Result filter applying :class:`nvflare_gia.defenses.calibrated.CalibratedDefense`; must be the first defense.

    Args:
        defense: see :class:`nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`.
        target: see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`.
        margin: see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`.
        metric: see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`.
        min_strength: see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`.
        max_strength: see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`.
        ladder_factor: see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`.
        confirmations: see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`.
        block_lower_bound: see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`.
        total_seconds: see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`.
        max_images: see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`.
        max_seconds: see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`.
        max_iterations: see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`.
        restarts: see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`.
        attack_seed: see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`.
        device: see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`.
        num_threads: see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`.
        parallel_restarts: see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`.
        prior: see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`; use the server
            widget's ``prior`` (the jobs use ``val_retrieval``).
        seed: the noise seed, see :class:`~nvflare_gia.defenses.calibrated.CalibratedDefenseConfig`
            (leave None in production).
        data_spec: the job's ``DataSpec`` file in the app's config folder (or a path or JSON text).

    Raises:
        TypeError, ConfigError: for invalid arguments.
    """

    _needs_data = True

    def __init__(
        self,
        defense: str = CalibratedDefenseConfig.defense,
        target: float = CalibratedDefenseConfig.target,
        margin: float = CalibratedDefenseConfig.margin,
        metric: str = CalibratedDefenseConfig.metric,
        min_strength: float | None = CalibratedDefenseConfig.min_strength,
        max_strength: float | None = CalibratedDefenseConfig.max_strength,
        ladder_factor: float = CalibratedDefenseConfig.ladder_factor,
        confirmations: int = CalibratedDefenseConfig.confirmations,
        block_lower_bound: bool = CalibratedDefenseConfig.block_lower_bound,
        total_seconds: float | None = CalibratedDefenseConfig.total_seconds,
        max_images: int = CalibratedDefenseConfig.max_images,
        max_seconds: float | None = CalibratedDefenseConfig.max_seconds,
        max_iterations: int = CalibratedDefenseConfig.max_iterations,
        restarts: int = CalibratedDefenseConfig.restarts,
        attack_seed: int = CalibratedDefenseConfig.attack_seed,
        device: str = CalibratedDefenseConfig.device,
        num_threads: int | None = CalibratedDefenseConfig.num_threads,
        parallel_restarts: int = CalibratedDefenseConfig.parallel_restarts,
        prior: str = CalibratedDefenseConfig.prior,
        seed: int | None = CalibratedDefenseConfig.seed,
        data_spec: str = DEFAULT_DATA_SPEC_FILE,
    ) -> None:
        self.defense = defense
        self.target = target
        self.margin = margin
        self.metric = metric
        self.min_strength = min_strength
        self.max_strength = max_strength
        self.ladder_factor = ladder_factor
        self.confirmations = confirmations
        self.block_lower_bound = block_lower_bound
        self.total_seconds = total_seconds
        self.max_images = max_images
        self.max_seconds = max_seconds
        self.max_iterations = max_iterations
        self.restarts = restarts
        self.attack_seed = attack_seed
        self.device = device
        self.num_threads = num_threads
        self.parallel_restarts = parallel_restarts
        self.prior = prior
        self.seed = seed
        self.data_spec = data_spec
        super().__init__(data_spec)

    def _build_defense(self) -> Defense:
        return CalibratedDefense(
            CalibratedDefenseConfig(
                defense=self.defense, target=self.target, margin=self.margin, metric=self.metric, min_strength=self.min_strength,
                max_strength=self.max_strength, ladder_factor=self.ladder_factor, confirmations=self.confirmations,
                block_lower_bound=self.block_lower_bound, total_seconds=self.total_seconds,
                max_images=self.max_images, max_seconds=self.max_seconds, max_iterations=self.max_iterations,
                restarts=self.restarts, attack_seed=self.attack_seed, device=self.device, num_threads=self.num_threads,
                parallel_restarts=self.parallel_restarts, prior=self.prior, seed=self.seed,
            )
        )

    def _needs_val_images(self) -> bool:
        return self.prior != "flat"

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO:
        """Apply the calibrated defense (see :meth:`DefenseFilter.process_dxo`) and record the calibration."""
        dxo = super().process_dxo(dxo, shareable, fl_ctx)
        record: dict[str, Any] = dict(dxo.get_meta_prop(GIA_DEFENSE_META_KEY))
        params = dict(record["params"])
        calibration = params.pop(CALIBRATION_PARAM)
        record["params"] = params
        dxo.set_meta_prop(GIA_DEFENSE_META_KEY, record)
        dxo.set_meta_prop(GIA_CALIBRATION_META_KEY, calibration)
        self.log_info(
            fl_ctx,
            f"{record['name']}: {calibration['status']}, {calibration['strength_name']}={calibration['strength']:.4g} "
            f"({calibration['metric']}={calibration['value']}, target {calibration['target']} - margin {calibration['margin']}) after "
            f"{calibration['num_tries']} tries in {calibration['seconds']:.1f} s",
        )
        return dxo
