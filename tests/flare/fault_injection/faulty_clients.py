"""Client-side faults, shipped as a job's custom code by the fault tests.

Both act on one site from one round on and leave every other site and round untouched.
"""

from __future__ import annotations

from nvflare.apis.dxo import DataKind
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.app_common.app_constant import AppConstants

from nvflare_gia.flare.client_train import GIA_TRAINING_META_KEY
from nvflare_gia.flare.executor import TrainingExecutor


def _round_of(shareable, fl_ctx) -> int | None:
    value = shareable.get_header(AppConstants.CURRENT_ROUND)
    if value is None:
        value = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
    return None if value is None else int(value)


class DropTrainingMetaFilter(DXOFilter):
    """Task result filter: ``site``'s updates in ``rounds`` leave without their ``gia_training`` meta
    (a client running an older training script). FedAvg still aggregates them: it needs only the
    weights and ``NUM_STEPS_CURRENT_ROUND``."""

    def __init__(self, site: str = "site-3", rounds: list[int] | None = None) -> None:
        super().__init__(supported_data_kinds=[DataKind.WEIGHT_DIFF, DataKind.WEIGHTS], data_kinds_to_filter=None)
        self.site = site
        self.rounds = [0] if rounds is None else rounds

    def process_dxo(self, dxo, shareable, fl_ctx):
        if fl_ctx.get_identity_name() != self.site or _round_of(shareable, fl_ctx) not in self.rounds:
            return None
        dxo.meta.pop(GIA_TRAINING_META_KEY, None)
        return dxo


class DroppingOutExecutor(TrainingExecutor):
    """``site``'s training raises from ``from_round`` on: the site replies EXECUTION_EXCEPTION and
    sends no update (a site dropping out of the federation)."""

    def __init__(self, train_args: str = "", site: str = "site-3", from_round: int = 1) -> None:
        super().__init__(train_args=train_args)
        self.site = site
        self.from_round = from_round

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        round_index = _round_of(shareable, fl_ctx)
        if fl_ctx.get_identity_name() == self.site and round_index is not None and round_index >= self.from_round:
            raise RuntimeError(f"injected dropout of {self.site} in round {round_index}")
        return super().execute(task_name, shareable, fl_ctx, abort_signal)
