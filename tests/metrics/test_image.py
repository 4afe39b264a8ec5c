"""Tests for nvflare_gia.metrics.image against hand-computed values and scikit-image."""

from __future__ import annotations

import doctest
import math
import warnings

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from nvflare_gia.errors import ConfigError, DataError
from nvflare_gia.metrics import PSNR_CAP_DB, compute_mse, compute_psnr, compute_ssim
from nvflare_gia.metrics import image as image_module


def _noisy(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(images + sigma * rng.standard_normal(images.shape), 0.0, 1.0)


def _hand_pair() -> tuple[np.ndarray, np.ndarray]:
    """Two 3x3 pairs: a uniform 0.1 offset (MSE 0.01) and one pixel off by 0.9 (MSE 0.81 / 9)."""
    truth = np.zeros((2, 3, 3))
    truth[0] = 0.5
    rec = truth.copy()
    rec[0] += 0.1
    rec[1, 1, 2] = 0.9
    return rec, truth


def test_mse_matches_hand_computation():
    rec, truth = _hand_pair()
    np.testing.assert_allclose(compute_mse(rec, truth), [0.01, 0.09], rtol=1e-12)


def test_psnr_matches_hand_formula_for_both_data_ranges():
    rec, truth = _hand_pair()
    np.testing.assert_allclose(compute_psnr(rec, truth), [20.0, 10 * math.log10(1 / 0.09)], rtol=1e-12)
    np.testing.assert_allclose(
        compute_psnr(2 * rec, 2 * truth, data_range=2.0), [10 * math.log10(4 / 0.04), 10 * math.log10(4 / 0.36)]
    )


def test_psnr_matches_skimage_on_chest_xrays(cxr, rng):
    truth = cxr[:6]
    rec = _noisy(truth, 0.05, rng)
    expected = [peak_signal_noise_ratio(t, r, data_range=1.0) for r, t in zip(rec, truth)]
    np.testing.assert_allclose(compute_psnr(rec, truth), expected, rtol=1e-12)


def test_psnr_of_identical_images_is_capped_without_warning(cxr):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = compute_psnr(cxr[:3], cxr[:3])
    np.testing.assert_array_equal(values, [PSNR_CAP_DB] * 3)
    assert PSNR_CAP_DB == 100.0


def test_ssim_matches_skimage_on_chest_xrays(cxr, rng):
    truth = cxr[:6]
    rec = _noisy(truth, np.linspace(0.01, 0.3, 6)[:, None, None], rng)
    expected = np.array([structural_similarity(t, r, win_size=7, data_range=1.0) for r, t in zip(rec, truth)])
    values = compute_ssim(rec, truth)
    np.testing.assert_allclose(values, expected, rtol=1e-12)
    assert values.shape == (6,) and np.ptp(values) > 0.5  # one value per image, not a batch mean


def test_ssim_of_identical_images_is_one(cxr):
    np.testing.assert_allclose(compute_ssim(cxr[:4], cxr[:4]), 1.0, rtol=1e-12)


def test_ssim_stays_at_most_one_for_a_copy_that_differs_by_float32_rounding(cxr):
    # 0.5 + (x - 0.5) in float32 differs from x by rounding; scikit-image then returns 1 + 2e-16
    # for many of these images, which must not leave SSIM's range.
    truth = cxr[:8].astype(np.float32)
    copy = np.float32(0.5) + (truth - np.float32(0.5))
    assert not np.array_equal(copy, truth)
    values = compute_ssim(copy, truth)
    assert np.all(values <= 1.0)
    np.testing.assert_allclose(values, 1.0, rtol=1e-12)


def test_ssim_with_data_range_255_matches_skimage(cxr, rng):
    truth = cxr[:2] * 255
    rec = _noisy(cxr[:2], 0.1, rng) * 255
    expected = [structural_similarity(t, r, data_range=255.0) for r, t in zip(rec, truth)]
    np.testing.assert_allclose(compute_ssim(rec, truth, data_range=255.0), expected, rtol=1e-12)


@pytest.mark.parametrize(("side", "win_size"), [(5, 5), (6, 5), (4, 3), (3, 3)])
def test_ssim_of_tiny_images_uses_largest_odd_window(side, win_size, rng):
    truth = rng.random((2, side, side))
    rec = _noisy(truth, 0.2, rng)
    expected = [structural_similarity(t, r, win_size=win_size, data_range=1.0) for r, t in zip(rec, truth)]
    np.testing.assert_allclose(compute_ssim(rec, truth), expected, rtol=1e-12)


def test_ssim_of_images_smaller_than_3x3_raises(rng):
    with pytest.raises(DataError, match=r"at least 3x3.*\(2, 2\)"):
        compute_ssim(rng.random((1, 2, 2)), rng.random((1, 2, 2)))


@pytest.mark.parametrize("metric", [compute_mse, compute_psnr, compute_ssim])
def test_torch_and_numpy_inputs_give_equal_results(metric, cxr, rng):
    truth = cxr[:3].astype(np.float32)
    rec = _noisy(truth, 0.1, rng).astype(np.float32)
    expected = metric(rec, truth)
    rec_t = torch.from_numpy(rec).unsqueeze(1).requires_grad_(True)
    np.testing.assert_array_equal(metric(rec_t, torch.from_numpy(truth).unsqueeze(1)), expected)
    np.testing.assert_array_equal(metric(rec[:, None], truth), expected)  # (N, 1, H, W) with (N, H, W)
    assert expected.dtype == np.float64 and expected.shape == (3,)


@pytest.mark.parametrize("metric", [compute_mse, compute_psnr, compute_ssim])
def test_shape_mismatch_raises_data_error_naming_both_shapes(metric, rng):
    with pytest.raises(DataError, match=r"\(2, 1, 8, 8\) and \(3, 8, 8\)"):
        metric(rng.random((2, 1, 8, 8)), rng.random((3, 8, 8)))


@pytest.mark.parametrize("metric", [compute_mse, compute_psnr, compute_ssim])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_raise_data_error(metric, bad, rng):
    rec = rng.random((2, 8, 8))
    rec[1, 3, 4] = bad
    with pytest.raises(DataError, match=r"reconstruction must be finite.*\(1, 3, 4\)"):
        metric(rec, rng.random((2, 8, 8)))
    with pytest.raises(DataError, match="ground_truth must be finite"):
        metric(rng.random((2, 8, 8)), rec)


@pytest.mark.parametrize(
    "shape", [(0, 8, 8), (2, 0, 8), (8, 8), (2, 3, 8, 8), (1, 2, 1, 8, 8)], ids=["empty", "zero-h", "2d", "rgb", "5d"]
)
def test_bad_or_empty_shapes_raise_data_error(shape):
    with pytest.raises(DataError, match="reconstruction"):
        compute_mse(np.zeros(shape), np.zeros(shape))


def test_ground_truth_outside_data_range_raises(cxr):
    raw = cxr[:2] * 255  # forgot to scale uint8 images
    with pytest.raises(DataError, match=r"ground_truth must lie in \[0, 1\]"):
        compute_psnr(raw, raw)
    with pytest.raises(DataError, match=r"ground_truth must lie in \[0, 1\]"):
        compute_ssim(raw, raw)


@pytest.mark.parametrize("data_range", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_data_range_raises_config_error(data_range, rng):
    images = rng.random((1, 8, 8))
    with pytest.raises(ConfigError, match="compute_ssim: data_range must be"):
        compute_ssim(images, images, data_range=data_range)


def test_non_numeric_images_raise_type_error():
    with pytest.raises(TypeError, match="real numeric dtype"):
        compute_mse(np.zeros((1, 4, 4), dtype=complex), np.zeros((1, 4, 4)))


def test_metrics_do_not_mutate_inputs(rng):
    rec, truth = rng.random((2, 8, 8)), rng.random((2, 8, 8))
    before = rec.copy(), truth.copy()
    compute_ssim(rec, truth)
    compute_psnr(rec, truth)
    np.testing.assert_array_equal(rec, before[0])
    np.testing.assert_array_equal(truth, before[1])


def test_docstring_examples_run():
    assert doctest.testmod(image_module, raise_on_error=False).failed == 0
