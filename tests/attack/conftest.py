"""Shared fixtures of the attack tests: real chest X-rays and one client round from an untrained SmallCNN."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch

from nvflare_gia.models import SmallCNN
from nvflare_gia.training import TrainingConfig, train_local


@pytest.fixture(scope="module")
def xrays(nih_cxr_path) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 8 training chest X-rays, ``(8, 1, 64, 64)`` in [0, 1], and their labels."""
    with np.load(nih_cxr_path) as data:
        images = torch.tensor(data["train_images"][:8], dtype=torch.float32)[:, None] / 255.0
        labels = torch.tensor(data["train_labels"][:8]).long().reshape(-1)
    return images, labels


def _client_round(images: torch.Tensor, labels: torch.Tensor, batch_size: int, config: TrainingConfig | None = None, seed: int = 0):
    """One client round from ``SmallCNN`` initialised under ``seed``: ``(model, global_state, update)``."""
    config = config or TrainingConfig()
    torch.manual_seed(seed)
    model = SmallCNN()
    global_state = copy.deepcopy(model.state_dict())
    trained = copy.deepcopy(model)
    train_local(trained, images, labels, batch_size, config)
    return model, global_state, {k: v - global_state[k] for k, v in trained.state_dict().items()}


@pytest.fixture(scope="session")
def client_round() -> Callable:
    """:func:`_client_round` as a fixture (test modules cannot import conftest)."""
    return _client_round
