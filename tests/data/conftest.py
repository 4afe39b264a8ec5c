"""Shared fixtures for the ``nvflare_gia.data`` tests: paths of the real datasets beside the repo."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real dataset {name} not found at {path} (shared/ is expected beside the repo)")
    return path


@pytest.fixture
def nih_path() -> Path:
    """``../shared/data/nih_cxr1000_64.npz`` (skips the test when absent)."""
    return _shared_file("nih_cxr1000_64.npz")


@pytest.fixture
def pneumonia_path() -> Path:
    """``../shared/data/pneumoniamnist.npz`` (skips the test when absent)."""
    return _shared_file("pneumoniamnist.npz")
