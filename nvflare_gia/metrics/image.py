"""Per-image similarity between reconstructions and true images: MSE, PSNR and SSIM.

Every function takes two batches of one-channel images of shape (N, 1, H, W) or (N, H, W), as
NumPy arrays or torch tensors, compares image ``i`` of ``reconstruction`` with image ``i`` of
``ground_truth`` (pair them first with :func:`nvflare_gia.metrics.match_reconstructions`), and
returns a float64 array of N per-image values. Values are computed in float64 on the CPU.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from nvflare_gia.errors import DataError
from nvflare_gia.metrics._validation import as_images, as_real, check_range, check_same_shape

__all__ = ["ImageMetric", "PSNR_CAP_DB", "SSIM_WIN_SIZE", "compute_mse", "compute_psnr", "compute_ssim"]

PSNR_CAP_DB = 100.0
"""PSNR reported for identical images (and the ceiling for near-identical ones), in dB.

PSNR is infinite when the MSE is 0. A cap keeps means and JSON logs finite; 100 dB is an MSE of
1e-10 at data range 1, far below any difference visible in an 8-bit image (one grey level is
about 48 dB)."""

SSIM_WIN_SIZE = 7
"""Side of the SSIM window (scikit-image's default). Images smaller than 7 pixels on a side use the
largest odd window that fits."""


class ImageMetric(str, Enum):
    """Similarity used to pair reconstructions with images (matching, IIP).

    ``"ssim"``: structural similarity, higher is closer. ``"mse"``: mean squared error, lower is closer.
    """

    SSIM = "ssim"
    MSE = "mse"


def compute_mse(reconstruction: Any, ground_truth: Any) -> np.ndarray:
    """Mean squared error of each reconstruction against its true image.

    Lower means more leakage (0 for an exact copy).

    Args:
        reconstruction: images of shape (N, 1, H, W) or (N, H, W), values in [0, 1].
        ground_truth: true images of the same shape.

    Returns:
        float64 array of shape (N,): the mean over pixels of the squared difference.

    Raises:
        DataError: if a batch is empty, holds NaN/inf, or the shapes differ.
        TypeError: if an input is not real-valued.

    Example:
        >>> import numpy as np
        >>> compute_mse(np.full((2, 4, 4), 0.5), np.stack([np.full((4, 4), 0.5), np.zeros((4, 4))]))
        array([0.  , 0.25])
    """
    rec, gt = _as_pair(reconstruction, ground_truth, func="compute_mse")
    return np.mean((rec - gt) ** 2, axis=(1, 2))


def compute_psnr(reconstruction: Any, ground_truth: Any, data_range: float = 1.0) -> np.ndarray:
    """Peak signal-to-noise ratio of each reconstruction, with ``skimage.metrics.peak_signal_noise_ratio``.

    Higher means more leakage. PSNR = 10 log10(data_range**2 / MSE); identical images (MSE 0, PSNR
    infinite) and any PSNR above :data:`PSNR_CAP_DB` are reported as ``PSNR_CAP_DB`` (100 dB) so
    that batch means stay finite and JSON-safe.

    Args:
        reconstruction: images of shape (N, 1, H, W) or (N, H, W).
        ground_truth: true images of the same shape, values in [0, data_range].
        data_range: the span of possible pixel values (1.0 for images scaled to [0, 1]).

    Returns:
        float64 array of shape (N,), in dB, at most ``PSNR_CAP_DB``.

    Raises:
        DataError: if a batch is empty, holds NaN/inf, the shapes differ, or ``ground_truth``
            leaves [0, data_range].
        ConfigError: if ``data_range`` is not a finite number > 0.
        TypeError: if an input is not real-valued.

    Example:
        >>> import numpy as np
        >>> truth = np.zeros((2, 8, 8))
        >>> compute_psnr(truth + np.array([0.1, 0.0])[:, None, None], truth)
        array([ 20., 100.])
    """
    func = "compute_psnr"
    data_range = as_real(data_range, func=func, arg="data_range", minimum=0.0, strict=True)
    rec, gt = _as_pair(reconstruction, ground_truth, func=func, data_range=data_range)
    with np.errstate(divide="ignore"):  # MSE 0 -> inf, capped below
        values = np.array(
            [peak_signal_noise_ratio(g, r, data_range=data_range) for r, g in zip(rec, gt)], dtype=np.float64
        )
    return np.minimum(values, PSNR_CAP_DB)


def compute_ssim(reconstruction: Any, ground_truth: Any, data_range: float = 1.0) -> np.ndarray:
    """Structural similarity (Wang et al., IEEE TIP 2004) of each reconstruction, per 2-D image.

    Higher means more leakage (1 for an exact copy). Uses ``skimage.metrics.structural_similarity``
    with its defaults (uniform 7x7 window, K1=0.01, K2=0.03, sample covariance) and returns the
    mean SSIM over the image. Images smaller than 7 pixels on a side use the largest odd window
    that fits (at least 3).

    Args:
        reconstruction: images of shape (N, 1, H, W) or (N, H, W), with H and W at least 3.
        ground_truth: true images of the same shape, values in [0, data_range].
        data_range: the span of possible pixel values (1.0 for images scaled to [0, 1]).

    Returns:
        float64 array of shape (N,), values in [-1, 1].

    Raises:
        DataError: if a batch is empty, holds NaN/inf, the shapes differ, an image is smaller
            than 3x3, or ``ground_truth`` leaves [0, data_range].
        ConfigError: if ``data_range`` is not a finite number > 0.
        TypeError: if an input is not real-valued.

    Example:
        >>> import numpy as np
        >>> truth = np.random.default_rng(0).random((2, 16, 16))
        >>> compute_ssim(truth, truth).round(6)
        array([1., 1.])
    """
    func = "compute_ssim"
    data_range = as_real(data_range, func=func, arg="data_range", minimum=0.0, strict=True)
    rec, gt = _as_pair(reconstruction, ground_truth, func=func, data_range=data_range)
    win_size = _ssim_win_size(gt.shape, func=func)
    return np.array([_ssim(r, g, data_range, win_size) for r, g in zip(rec, gt)], dtype=np.float64)


def _as_pair(
    reconstruction: Any, ground_truth: Any, *, func: str, data_range: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate two equally shaped batches; check the truth's range when ``data_range`` is given."""
    rec = as_images(reconstruction, func=func, arg="reconstruction")
    gt = as_images(ground_truth, func=func, arg="ground_truth")
    check_same_shape(
        rec, gt, raw_first=reconstruction, raw_second=ground_truth, names=("reconstruction", "ground_truth"), func=func
    )
    if data_range is not None:
        check_range(gt, data_range=data_range, func=func, arg="ground_truth")
    return rec, gt


def _ssim_win_size(shape: tuple[int, ...], *, func: str) -> int:
    """Window side for SSIM: 7, or the largest odd size that fits a smaller image."""
    side = min(shape[-2:])
    if side < 3:
        raise DataError(f"{func}: images must be at least 3x3 for SSIM, got image size {tuple(shape[-2:])!r}.")
    return min(SSIM_WIN_SIZE, side if side % 2 else side - 1)


def _ssim(reconstruction: np.ndarray, ground_truth: np.ndarray, data_range: float, win_size: int) -> float:
    """SSIM of two validated 2-D float64 images, clipped to [-1, 1].

    scikit-image can overshoot 1 by an ulp for images that differ only by float32 rounding (an
    exact reconstruction); the clip keeps the documented range that RDLV and the reports check.
    """
    value = structural_similarity(ground_truth, reconstruction, win_size=win_size, data_range=data_range)
    return float(np.clip(value, -1.0, 1.0))
