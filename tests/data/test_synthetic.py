"""Tests of ``nvflare_gia.data.synthetic``: determinism, range, balance and a learnable finding."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nvflare_gia.data import make_synthetic_cxr, synthetic_splits
from nvflare_gia.errors import ConfigError


def test_make_synthetic_cxr_is_identical_for_same_seed() -> None:
    first = make_synthetic_cxr(20, image_size=32, seed=7)
    again = make_synthetic_cxr(20, image_size=32, seed=7)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])


def test_make_synthetic_cxr_differs_for_different_seed() -> None:
    images_a, _ = make_synthetic_cxr(20, image_size=32, seed=0)
    images_b, _ = make_synthetic_cxr(20, image_size=32, seed=1)
    assert np.abs(images_a - images_b).mean() > 0.01


@pytest.mark.parametrize("image_size", [16, 32, 64, 128])
def test_make_synthetic_cxr_has_shape_dtype_and_range_at_size(image_size: int) -> None:
    images, labels = make_synthetic_cxr(10, image_size=image_size, seed=0)
    assert images.shape == (10, 1, image_size, image_size) and images.dtype == np.float32
    assert labels.shape == (10,) and labels.dtype == np.int64
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert images.std() > 0.1  # structure, not a flat image


@pytest.mark.parametrize(("num_images", "num_classes"), [(101, 2), (100, 3), (7, 4)])
def test_make_synthetic_cxr_balances_labels_for_class_count(num_images: int, num_classes: int) -> None:
    _, labels = make_synthetic_cxr(num_images, image_size=16, seed=3, num_classes=num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    assert counts.sum() == num_images and counts.max() - counts.min() <= 1
    assert labels.min() >= 0 and labels.max() < num_classes


def test_make_synthetic_cxr_has_dark_lungs_in_bright_body() -> None:
    images, _ = make_synthetic_cxr(50, image_size=64, seed=0)
    mean = images[:, 0].mean(axis=0)
    lung, mediastinum, corner = mean[20:36, 10:20], mean[20:36, 30:34], mean[:4, :4]
    assert lung.mean() + 0.2 < mediastinum.mean()
    assert corner.mean() < lung.mean()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded: on a shared 2-core machine this is faster and steadier."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.usefixtures("one_torch_thread")
def test_make_synthetic_cxr_finding_is_learnable_by_tiny_model() -> None:
    torch.manual_seed(0)
    images, labels = make_synthetic_cxr(400, image_size=32, seed=3)
    x, y = F.avg_pool2d(torch.from_numpy(images), 2), torch.from_numpy(labels)  # 16x16 keeps it cheap
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 5, padding=2), torch.nn.ReLU(), torch.nn.AdaptiveMaxPool2d(4),
        torch.nn.Flatten(), torch.nn.Linear(128, 2),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):
        optimizer.zero_grad()
        F.cross_entropy(model(x[:200]), y[:200]).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model(x[200:]).argmax(dim=1) == y[200:]).float().mean().item()
    assert accuracy > 0.8


def test_make_synthetic_cxr_places_finding_by_class_band() -> None:
    images, labels = make_synthetic_cxr(600, image_size=32, seed=0, num_classes=3)
    mean = {k: images[labels == k, 0].mean(axis=0) for k in range(3)}
    rows_1 = (mean[1] - mean[0]).mean(axis=1)
    rows_2 = (mean[2] - mean[0]).mean(axis=1)
    assert rows_1.max() > 0.03 and rows_2.max() > 0.03  # both findings brighten the lungs
    assert int(rows_1.argmax()) < int(rows_2.argmax())  # class 1 higher in the lung than class 2


def test_make_synthetic_cxr_generates_1000_images_quickly() -> None:
    start = time.perf_counter()
    make_synthetic_cxr(1000, image_size=64, seed=0)
    assert time.perf_counter() - start < 3.0


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"num_images": 0}, "make_synthetic_cxr: num_images must be >= 1, got 0"),
        ({"num_images": 4, "image_size": 8}, "make_synthetic_cxr: image_size must be >= 16, got 8"),
        ({"num_images": 4, "num_classes": 1}, "make_synthetic_cxr: num_classes must be >= 2, got 1"),
        ({"num_images": 4, "seed": -1}, "make_synthetic_cxr: seed must be >= 0, got -1"),
    ],
)
def test_make_synthetic_cxr_rejects_out_of_range_argument(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        make_synthetic_cxr(**kwargs)


def test_make_synthetic_cxr_rejects_non_int_size() -> None:
    with pytest.raises(TypeError, match="image_size must be an int, got 32.0"):
        make_synthetic_cxr(4, image_size=32.0)


def test_synthetic_splits_have_requested_sizes_and_distinct_images() -> None:
    splits = synthetic_splits(30, 10, 12, image_size=16, seed=5, num_classes=3)
    assert (len(splits.train_labels), len(splits.val_labels), len(splits.test_labels)) == (30, 10, 12)
    assert splits.class_names == ("normal", "finding_1", "finding_2") and splits.image_size == 16
    train = splits.train_images.reshape(30, -1)
    for other in (splits.val_images, splits.test_images):
        distances = np.abs(train[:, None, :] - other.reshape(len(other), -1)[None]).mean(axis=2)
        assert distances.min() > 0.01


def test_synthetic_splits_are_deterministic_and_seed_dependent() -> None:
    first = synthetic_splits(8, 4, 4, image_size=16, seed=1)
    again = synthetic_splits(8, 4, 4, image_size=16, seed=1)
    other = synthetic_splits(8, 4, 4, image_size=16, seed=2)
    np.testing.assert_array_equal(first.val_images, again.val_images)
    assert not np.array_equal(first.val_images, other.val_images)


def test_synthetic_splits_rejects_empty_split() -> None:
    with pytest.raises(ConfigError, match="synthetic_splits: num_val must be >= 1, got 0"):
        synthetic_splits(10, 0, 5)
