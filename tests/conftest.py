"""Shared fixtures: where the real chest X-rays live (``../shared/data`` beside the checkout)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
NIH_CXR = SHARED_DATA / "nih_cxr1000_64.npz"


@pytest.fixture(scope="session")
def nih_cxr_path() -> Path:
    """Path of the 64×64 NIH chest X-ray file; skips the test where ``../shared`` is absent."""
    if not NIH_CXR.is_file():
        pytest.skip(f"real chest X-rays not found at {NIH_CXR}")
    return NIH_CXR
