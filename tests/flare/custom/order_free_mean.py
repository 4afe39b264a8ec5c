"""A FedAvg aggregator whose result does not depend on the order in which clients reply.

FedAvg's built-in InTime aggregation adds each result as it arrives; float32 addition is not
associative, so two runs whose clients reply in a different order end with models that differ in
the last bits. Tests that compare two runs bit for bit use this aggregator in both.
"""

from __future__ import annotations

import numpy as np
import torch
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator


class OrderFreeMean(ModelAggregator):
    """Weighted mean (weight: the result's local step count) summed in float64 in client-name order."""

    def __init__(self) -> None:
        super().__init__()
        self._results: dict[str, FLModel] = {}

    def accept_model(self, model: FLModel) -> None:
        self._results[(model.meta or {})["client_name"]] = model

    def aggregate_model(self) -> FLModel:
        names = sorted(self._results)
        weights = {name: float((self._results[name].meta or {}).get(FLMetaKey.NUM_STEPS_CURRENT_ROUND, 1.0)) for name in names}
        total = sum(weights.values())
        first = self._results[names[0]]
        params = {}
        for key, value in first.params.items():
            mean = sum(np.asarray(self._results[name].params[key], dtype=np.float64) * weights[name] for name in names) / total
            mean = mean.astype(np.asarray(value).dtype)
            params[key] = torch.from_numpy(mean) if isinstance(value, torch.Tensor) else mean
        self.reset_stats()
        return FLModel(params=params, params_type=first.params_type)

    def reset_stats(self) -> None:
        self._results = {}
