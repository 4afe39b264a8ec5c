"""Fixtures for the metrics tests: real chest X-rays (skipped where ``../shared`` is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CXR_PATH = Path(__file__).resolve().parents[3] / "shared" / "data" / "nih_cxr1000_64.npz"


@pytest.fixture(scope="session")
def cxr() -> np.ndarray:
    """The first 40 training chest X-rays, float64 in [0, 1], shape (40, 64, 64)."""
    if not CXR_PATH.is_file():
        pytest.skip(f"real chest X-rays not found at {CXR_PATH}")
    with np.load(CXR_PATH) as data:
        images = data["train_images"][:40].astype(np.float64) / 255.0
    images.setflags(write=False)
    return images


@pytest.fixture()
def rng() -> np.random.Generator:
    """A fresh seeded generator per test."""
    return np.random.default_rng(1234)
