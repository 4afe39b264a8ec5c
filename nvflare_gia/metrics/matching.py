"""Optimal one-to-one pairing of reconstructions with true images (Hungarian algorithm).

An attack returns its reconstructions in no particular order, so they are paired with the true
images before scoring, as breaching does (``analysis/analysis.py::compute_batch_order``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from nvflare_gia.metrics._validation import as_images, check_range, check_same_image_size, look_up_option
from nvflare_gia.metrics.image import ImageMetric, _ssim, _ssim_win_size

__all__ = ["match_reconstructions"]


def match_reconstructions(
    reconstruction: Any, ground_truth: Any, metric: str | ImageMetric = ImageMetric.SSIM
) -> tuple[np.ndarray, np.ndarray]:
    """Pair each reconstruction with a distinct true image so the total similarity is best.

    Solves the assignment problem exactly with ``scipy.optimize.linear_sum_assignment`` on the
    N x M matrix of pairwise scores: it maximises the summed SSIM (``metric="ssim"``) or minimises
    the summed MSE (``metric="mse"``). Unlike greedy pairing, no early pair can steal an image that
    a later reconstruction needs. With unequal counts, min(N, M) pairs are returned and the rest
    stay unpaired. Cost: N x M SSIM evaluations.

    Args:
        reconstruction: N images of shape (N, 1, H, W) or (N, H, W).
        ground_truth: M true images of the same (H, W), values in [0, 1].
        metric: ``"ssim"`` (default) or ``"mse"``, see :class:`ImageMetric`.

    Returns:
        ``(reconstruction_indices, ground_truth_indices)``: two int arrays of length min(N, M);
        ``reconstruction[reconstruction_indices[k]]`` is paired with
        ``ground_truth[ground_truth_indices[k]]``. ``reconstruction_indices`` is ascending.

    Raises:
        ConfigError: if ``metric`` is not one of the choices.
        DataError: if a batch is empty, holds NaN/inf, the image sizes differ, or (for SSIM)
            ``ground_truth`` leaves [0, 1].
        TypeError: if an input is not real-valued.

    Example:
        >>> import numpy as np
        >>> truth = np.random.default_rng(0).random((3, 8, 8))
        >>> rec_idx, gt_idx = match_reconstructions(truth[[2, 0, 1]], truth)
        >>> rec_idx.tolist(), gt_idx.tolist()
        ([0, 1, 2], [2, 0, 1])
    """
    cost = _pairwise_cost(reconstruction, ground_truth, metric, func="match_reconstructions")
    rec_idx, gt_idx = linear_sum_assignment(cost)
    return rec_idx.astype(np.int64), gt_idx.astype(np.int64)


def _pairwise_cost(
    reconstruction: Any,
    ground_truth: Any,
    metric: str | ImageMetric,
    *,
    func: str,
    names: tuple[str, str] = ("reconstruction", "ground_truth"),
) -> np.ndarray:
    """N x M matrix where lower means closer: MSE, or minus SSIM (data range 1)."""
    chosen = look_up_option(metric, ImageMetric, func=func, arg="metric")
    rec = as_images(reconstruction, func=func, arg=names[0])
    gt = as_images(ground_truth, func=func, arg=names[1])
    check_same_image_size(rec, gt, raw_first=reconstruction, raw_second=ground_truth, names=names, func=func)
    if chosen is ImageMetric.MSE:
        # One row at a time: exact (same values as compute_mse) without an N x M x H x W temporary.
        return np.stack([np.mean((gt - r) ** 2, axis=(1, 2)) for r in rec])
    check_range(gt, data_range=1.0, func=func, arg=names[1])
    win_size = _ssim_win_size(gt.shape, func=func)
    return -np.array([[_ssim(r, g, 1.0, win_size) for g in gt] for r in rec], dtype=np.float64)
