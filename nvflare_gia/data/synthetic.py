"""Synthetic chest-X-ray-like images with a label-dependent finding, for tests and data-free runs.

Each image is drawn analytically (vectorised over the batch, so 1000 images of 64x64 take well
under a second): a bright thorax ellipse with curved rib stripes, a bright mediastinum/spine band,
two dark lung fields, a heart shadow, smooth low-frequency noise and fine noise, with a random
shift, scale, contrast and lung darkness per image. Class ``k > 0`` adds a localised opacity (a
Gaussian "consolidation" blob) inside one lung field; the blob's vertical band in the lung depends
on ``k``, so every class is distinguishable and a small CNN learns the task.
"""

from __future__ import annotations

import logging

import numpy as np

from nvflare_gia.data._checks import check_int
from nvflare_gia.data.datasets import DatasetSplits

__all__ = ["make_synthetic_cxr", "synthetic_splits"]

logger = logging.getLogger(__name__)

_MIN_IMAGE_SIZE = 16
_CHUNK = 256  # images generated at once; bounds memory at large resolutions
_NOISE_GRID = 6  # control points per axis of the smooth noise field
# Lung field geometry in normalised coordinates ([-1, 1], y down), before per-image shift/scale.
_LUNG_CX, _LUNG_CY, _LUNG_RX, _LUNG_RY = 0.42, -0.08, 0.30, 0.58
# Vertical range (relative to the lung centre) in which findings are placed, split into one band
# per positive class.
_FINDING_Y_RANGE = (-0.40, 0.38)


def _soft_ellipse(
    x: np.ndarray, y: np.ndarray, cx: np.ndarray, cy: np.ndarray, rx: np.ndarray, ry: np.ndarray, edge: float
) -> np.ndarray:
    """Ellipse indicator with a linear ramp of relative width ``edge`` at its border, in [0, 1]."""
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return np.clip((1.0 - r) / edge + 0.5, 0.0, 1.0)


def _interp_matrix(size: int, points: int) -> np.ndarray:
    """Linear-interpolation matrix (size, points) mapping ``points`` control values onto ``size`` pixels."""
    pos = np.linspace(0.0, points - 1.0, size)
    lo = np.minimum(np.floor(pos).astype(int), points - 2)
    frac = pos - lo
    mat = np.zeros((size, points), dtype=np.float32)
    mat[np.arange(size), lo] = 1.0 - frac
    mat[np.arange(size), lo + 1] = frac
    return mat


def _draw_parameters(rng: np.random.Generator, labels: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Per-image random parameters, each of shape (N, 1, 1) so they broadcast over (N, H, W)."""
    n = labels.shape[0]

    def uniform(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, size=(n, 1, 1)).astype(np.float32)

    params = {
        "dx": uniform(-0.06, 0.06),
        "dy": uniform(-0.06, 0.06),
        "scale": uniform(0.90, 1.05),
        "body": uniform(0.62, 0.78),
        "rib_amp": uniform(0.08, 0.14),
        "rib_freq": uniform(5.0, 6.5),
        "rib_phase": uniform(0.0, 2.0 * np.pi),
        "lung_depth": uniform(0.55, 0.70),
        "heart": uniform(0.25, 0.33),
        "gain": uniform(0.85, 1.10),
        "offset": uniform(-0.03, 0.05),
        "blob_amp": uniform(0.35, 0.50),
        "blob_sigma": uniform(0.12, 0.18),
        "blob_dx": uniform(-0.10, 0.10),
        "blob_side": np.where(rng.random((n, 1, 1)) < 0.5, -1.0, 1.0).astype(np.float32),
    }
    # Vertical band of the finding: class k > 0 uses band k - 1 of the lung's height.
    bands = max(num_classes - 1, 1)
    low, high = _FINDING_Y_RANGE
    width = (high - low) / bands
    band = np.clip(labels - 1, 0, None).reshape(n, 1, 1).astype(np.float32)
    params["blob_dy"] = (low + width * (band + rng.random((n, 1, 1)))).astype(np.float32)
    params["has_blob"] = (labels > 0).reshape(n, 1, 1).astype(np.float32)
    return params


def _render(params: dict[str, np.ndarray], rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Render images (N, H, W) in [0, 1] from per-image parameters."""
    n = params["dx"].shape[0]
    axis = np.linspace(-1.0, 1.0, image_size, dtype=np.float32)
    y, x = axis[:, None], axis[None, :]
    edge = max(0.12, 4.0 / image_size)
    dx, dy, s = params["dx"], params["dy"], params["scale"]
    xc, yc = x - dx, y - dy  # coordinates relative to the (shifted) thorax centre

    # Thorax: a wide ellipse running off the bottom of the frame, darker towards the shoulders.
    body = _soft_ellipse(xc, yc, 0.0, 0.25 * s, 1.02 * s, 1.25 * s, edge)
    img = (params["body"] * (1.0 - 0.15 * np.clip(-yc, 0.0, 1.0) * xc**2)) * body + 0.03
    # Two lung fields: rounded apex, wide base cut by a diaphragm dome that falls off laterally.
    lungs = np.zeros((n, image_size, image_size), dtype=np.float32)
    for side in (-1.0, 1.0):
        cx = side * _LUNG_CX * s
        field = _soft_ellipse(xc, yc, cx, (_LUNG_CY + 0.15) * s, _LUNG_RX * s, (_LUNG_RY + 0.15) * s, 1.5 * edge)
        dome = (_LUNG_CY + 0.45) * s + 0.25 * s * ((xc - cx + side * 0.1 * s) / (_LUNG_RX * s)) ** 2
        lungs = np.maximum(lungs, field * np.clip((dome - yc) / (edge * s) + 0.5, 0.0, 1.0))
    # Heart shadow (patient's left, image right) and mediastinum: they hide the lung behind them.
    heart = _soft_ellipse(xc, yc, 0.13 * s, 0.30 * s, 0.27 * s, 0.22 * s, 2.0 * edge)
    half_width = (0.09 + 0.05 * np.clip(yc + 0.5, 0.0, 1.5)) * s
    mediastinum = np.exp(-((xc / half_width) ** 4)) * body
    lungs = lungs * (1.0 - np.maximum(heart * params["heart"] * 3.0, mediastinum))
    img = img * (1.0 - params["lung_depth"] * lungs)
    # Curved rib shadows, visible over the lungs.
    ribs = 0.5 + 0.5 * np.cos(np.pi * params["rib_freq"] * (yc + 0.30 * xc**2) + params["rib_phase"])
    img += params["rib_amp"] * ribs**2 * lungs
    # Finding: a Gaussian opacity inside one lung field (classes k > 0 only).
    bx = params["blob_side"] * _LUNG_CX * s + params["blob_dx"] * s
    by = _LUNG_CY * s + params["blob_dy"] * _LUNG_RY * s
    sigma = params["blob_sigma"] * s
    blob = np.exp(-((xc - bx) ** 2 + (yc - by) ** 2) / (2.0 * sigma**2))
    img += params["has_blob"] * params["blob_amp"] * blob * lungs
    # Smooth low-frequency noise plus fine noise, then global contrast.
    grid = rng.standard_normal((n, _NOISE_GRID, _NOISE_GRID)).astype(np.float32)
    interp = _interp_matrix(image_size, _NOISE_GRID)
    img += 0.04 * np.einsum("hi,nij,wj->nhw", interp, grid, interp, optimize=True)
    img += 0.015 * rng.standard_normal((n, image_size, image_size), dtype=np.float32)
    img = params["gain"] * img + params["offset"]
    return np.clip(img, 0.0, 1.0).astype(np.float32, copy=False)


def _generate(
    num_images: int, image_size: int, rng: np.random.Generator, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``num_images`` images and labels from ``rng`` (arguments already validated)."""
    labels = rng.permutation(np.arange(num_images, dtype=np.int64) % num_classes)
    params = _draw_parameters(rng, labels, num_classes)
    images = np.empty((num_images, 1, image_size, image_size), dtype=np.float32)
    for start in range(0, num_images, _CHUNK):
        chunk = {key: value[start : start + _CHUNK] for key, value in params.items()}
        images[start : start + _CHUNK, 0] = _render(chunk, rng, image_size)
    return images, labels


def make_synthetic_cxr(
    num_images: int, image_size: int = 64, seed: int = 0, num_classes: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic chest-X-ray-like images whose class shows as a localised lung opacity.

    Class 0 is "normal"; class ``k > 0`` adds a bright Gaussian opacity inside one lung field, in
    the ``k``-th vertical band of the lung. Labels are balanced (counts differ by at most one).

    Args:
        num_images: number of images (>= 1).
        image_size: height and width in pixels (>= 16).
        seed: seed of the generator (>= 0); the same arguments always give the same images.
        num_classes: number of classes (>= 2).

    Returns:
        ``(images, labels)``: float32 ``(N, 1, H, W)`` in [0, 1] and int64 ``(N,)``.

    Raises:
        TypeError: if an argument is not an int.
        ConfigError: if an argument is below its minimum.

    Example:
        >>> images, labels = make_synthetic_cxr(8, image_size=32, seed=1)
        >>> images.shape, images.dtype, labels.dtype
        ((8, 1, 32, 32), dtype('float32'), dtype('int64'))
    """
    num_images = check_int("make_synthetic_cxr", "num_images", num_images, 1)
    image_size = check_int("make_synthetic_cxr", "image_size", image_size, _MIN_IMAGE_SIZE)
    seed = check_int("make_synthetic_cxr", "seed", seed, 0)
    num_classes = check_int("make_synthetic_cxr", "num_classes", num_classes, 2)
    return _generate(num_images, image_size, np.random.default_rng(seed), num_classes)


def synthetic_splits(
    num_train: int = 600,
    num_val: int = 200,
    num_test: int = 200,
    image_size: int = 64,
    seed: int = 0,
    num_classes: int = 2,
) -> DatasetSplits:
    """Train/val/test splits of synthetic chest X-rays (see ``make_synthetic_cxr``).

    Each split draws from its own child stream of ``numpy.random.SeedSequence(seed)``, so the
    splits never share images and none equals ``make_synthetic_cxr(..., seed=seed)``.

    Args:
        num_train: number of training images (>= 1).
        num_val: number of validation images (>= 1).
        num_test: number of test images (>= 1).
        image_size: height and width in pixels (>= 16).
        seed: seed of the generator (>= 0).
        num_classes: number of classes (>= 2); class names are ``"normal"`` then ``"finding_<k>"``.

    Returns:
        The three splits as a ``DatasetSplits``.

    Raises:
        TypeError: if an argument is not an int.
        ConfigError: if an argument is below its minimum.

    Example:
        >>> splits = synthetic_splits(20, 5, 5, image_size=32)
        >>> splits.train_images.shape, splits.num_classes
        ((20, 1, 32, 32), 2)
    """
    func = "synthetic_splits"
    counts = [
        check_int(func, "num_train", num_train, 1),
        check_int(func, "num_val", num_val, 1),
        check_int(func, "num_test", num_test, 1),
    ]
    image_size = check_int(func, "image_size", image_size, _MIN_IMAGE_SIZE)
    seed = check_int(func, "seed", seed, 0)
    num_classes = check_int(func, "num_classes", num_classes, 2)
    streams = np.random.SeedSequence(seed).spawn(3)
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = (
        _generate(count, image_size, np.random.default_rng(stream), num_classes)
        for count, stream in zip(counts, streams)
    )
    class_names = ("normal",) + tuple(f"finding_{k}" for k in range(1, num_classes))
    logger.debug("synthetic_splits: %s images of %dx%d, seed %d", counts, image_size, image_size, seed)
    return DatasetSplits(
        train_images=tr_x,
        train_labels=tr_y,
        val_images=va_x,
        val_labels=va_y,
        test_images=te_x,
        test_labels=te_y,
        class_names=class_names,
    )
