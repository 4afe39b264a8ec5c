"""The defense contract's context: ``DefenseContext`` validation and normalisation."""

from __future__ import annotations

import numpy as np

from nvflare_gia.attack import ThreatModel
from nvflare_gia.defenses import DefenseContext
from nvflare_gia.defenses.self_audit import threat_from_context
from nvflare_gia.training import TrainingConfig


def test_defense_context_stores_numpy_ints_as_python_ints():
    images = np.zeros((2, 1, 16, 16), dtype=np.float32)
    context = DefenseContext(
        round_index=np.int64(3), images=images, labels=np.array([0, 1]), batch_size=np.int64(2),
        training=TrainingConfig(), model="small_cnn", num_classes=np.int64(2), in_channels=np.int32(1),
    )
    for name in ("round_index", "batch_size", "num_classes", "in_channels"):
        assert type(getattr(context, name)) is int, name
    # the self-audit builds its threat model from the context; ThreatModel accepts Python ints only
    assert isinstance(threat_from_context(context), ThreatModel)
