"""Shared fixtures: where the real chest X-rays live (``../shared/data`` beside the checkout), one
torch thread, and a small cut of the synthetic images for cheap benchmark runs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
NIH_CXR = SHARED_DATA / "nih_cxr1000_64.npz"


@pytest.fixture(scope="session")
def nih_cxr_path() -> Path:
    """Path of the 64×64 NIH chest X-ray file; skips the test where ``../shared`` is absent."""
    if not NIH_CXR.is_file():
        pytest.skip(f"real chest X-rays not found at {NIH_CXR}")
    return NIH_CXR


@pytest.fixture
def own_network(monkeypatch) -> str:
    """The dotted path of a job's own network, importable during the test: ``SmallCNN`` with a
    4 x 4-pooled head, from ``tests/flare/custom/spatial_head_net.py`` (what a job ships in ``app/custom``)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "flare" / "custom"))
    return "spatial_head_net.SpatialHeadCNN"


@pytest.fixture
def varied_networks(monkeypatch, request) -> str:
    """The module name of ``tests/flare/custom/varied_networks.py`` (networks of other shapes than
    ``SmallCNN``'s: a convolution head, GroupNorm, unusual normalisation, MONAI's ``Classifier``,
    dropout before the classifier, blocks held in an ``nn.ModuleList``),
    importable during the test and removed from ``sys.modules`` afterwards."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "flare" / "custom"))
    request.addfinalizer(lambda: sys.modules.pop("varied_networks", None))
    return "varied_networks"


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: the machine's cores are shared, and OpenMP threads that wait on
    busy cores make many small operations (the data-aware defenses, short attacks) tens of times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def write_small_npz() -> Callable[..., Path]:
    """``write(folder, image_size=64)``: a ``.npz`` of the shared format with a small cut of the
    synthetic images (40 train, 8 val, 16 test), so a benchmark's reference classifier trains fast."""
    from nvflare_gia.data import DataSpec, load_splits

    def write(folder: Path, image_size: int = 64) -> Path:
        splits = load_splits(DataSpec(image_size=image_size))
        path = folder / "small.npz"
        np.savez(
            path,
            train_images=splits.train_images[:40], train_labels=splits.train_labels[:40],
            val_images=splits.val_images[:8], val_labels=splits.val_labels[:8],
            test_images=splits.test_images[:16], test_labels=splits.test_labels[:16],
        )
        return path

    return write
