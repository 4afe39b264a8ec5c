"""Tests for nvflare_gia.metrics.matching: known permutations, brute force and a greedy trap."""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from nvflare_gia.errors import ConfigError, DataError
from nvflare_gia.metrics import ImageMetric, match_reconstructions
from nvflare_gia.metrics import matching as matching_module


def _noisy(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(images + sigma * rng.standard_normal(images.shape), 0.0, 1.0)


@pytest.mark.parametrize("metric", ["ssim", "mse"])
def test_matching_recovers_known_permutation_of_chest_xrays(metric, cxr, rng):
    truth = cxr[:8]
    perm = rng.permutation(8)
    rec_idx, gt_idx = match_reconstructions(_noisy(truth[perm], 0.05, rng), truth, metric=metric)
    np.testing.assert_array_equal(rec_idx, np.arange(8))
    np.testing.assert_array_equal(gt_idx, perm)


def test_matching_with_fewer_reconstructions_pairs_each_with_its_source(cxr, rng):
    truth = cxr[:6]
    sources = np.array([4, 0, 2])
    rec_idx, gt_idx = match_reconstructions(_noisy(truth[sources], 0.05, rng), truth)
    np.testing.assert_array_equal(rec_idx, [0, 1, 2])
    np.testing.assert_array_equal(gt_idx, sources)


def test_matching_with_more_reconstructions_leaves_the_worst_unpaired(cxr, rng):
    truth = cxr[:3]
    rec = np.concatenate([_noisy(truth[[2, 1, 0]], 0.05, rng), rng.random((2, 64, 64))])  # two pure-noise extras
    rec_idx, gt_idx = match_reconstructions(rec, truth)
    np.testing.assert_array_equal(rec_idx, [0, 1, 2])
    np.testing.assert_array_equal(gt_idx, [2, 1, 0])


def test_hungarian_beats_greedy_on_constructed_case():
    # Flat images, MSE = (a - b)**2. Greedy takes the closest pair (rec 1, truth 0: 0.0004) first and
    # is then forced into rec 0 -> truth 1 (0.2025); the optimum pairs 0-0 (0.0064) and 1-1 (0.1225).
    rec = np.stack([np.full((4, 4), v) for v in (0.50, 0.60)])
    truth = np.stack([np.full((4, 4), v) for v in (0.58, 0.95)])
    cost = np.array([[(r - t) ** 2 for t in (0.58, 0.95)] for r in (0.50, 0.60)])

    greedy, free_rec, free_gt = [], {0, 1}, {0, 1}
    for r, t in sorted(itertools.product(range(2), range(2)), key=lambda pair: cost[pair]):
        if r in free_rec and t in free_gt:
            greedy.append((r, t))
            free_rec.discard(r)
            free_gt.discard(t)

    rec_idx, gt_idx = match_reconstructions(rec, truth, metric="mse")
    hungarian_total = cost[rec_idx, gt_idx].sum()
    greedy_total = sum(cost[pair] for pair in greedy)
    assert greedy == [(1, 0), (0, 1)]
    np.testing.assert_array_equal(gt_idx, [0, 1])
    assert hungarian_total == pytest.approx(0.1289) and greedy_total == pytest.approx(0.2029)


def test_ssim_matching_maximises_total_ssim_like_brute_force(cxr, rng):
    # Heavy noise makes several pairings plausible; the result must still be the global optimum.
    truth = cxr[10:15]
    rec = _noisy(truth[rng.permutation(5)], 0.45, rng)
    scores = np.array([[structural_similarity(t, r, data_range=1.0) for t in truth] for r in rec])
    best = max(scores[np.arange(5), list(p)].sum() for p in itertools.permutations(range(5)))
    rec_idx, gt_idx = match_reconstructions(rec, truth)
    assert scores[rec_idx, gt_idx].sum() == pytest.approx(best, rel=1e-12)


def test_torch_and_numpy_inputs_give_equal_matching(cxr, rng):
    truth = cxr[:4].astype(np.float32)
    rec = _noisy(truth[[3, 1, 0, 2]], 0.1, rng).astype(np.float32)
    expected = match_reconstructions(rec, truth)
    got = match_reconstructions(torch.from_numpy(rec)[:, None], torch.from_numpy(truth))
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)


def test_metric_accepts_enum_member(rng):
    truth = rng.random((3, 8, 8))
    for a, b in zip(match_reconstructions(truth, truth, ImageMetric.MSE), match_reconstructions(truth, truth, "mse")):
        np.testing.assert_array_equal(a, b)


def test_unknown_metric_raises_config_error_listing_choices(rng):
    images = rng.random((2, 8, 8))
    expected = r"match_reconstructions: metric must be one of \('ssim', 'mse'\), got 'ssmi'\. Did you mean 'ssim'\?"
    with pytest.raises(ConfigError, match=expected):
        match_reconstructions(images, images, metric="ssmi")


def test_different_image_sizes_raise_data_error_naming_both_shapes(rng):
    with pytest.raises(DataError, match=r"\(2, 8, 8\) and \(2, 1, 9, 9\)"):
        match_reconstructions(rng.random((2, 8, 8)), rng.random((2, 1, 9, 9)))


def test_nan_reconstruction_raises_data_error(rng):
    rec = rng.random((2, 8, 8))
    rec[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="reconstruction must be finite"):
        match_reconstructions(rec, rng.random((2, 8, 8)))


def test_docstring_examples_run():
    assert doctest.testmod(matching_module, raise_on_error=False).failed == 0
