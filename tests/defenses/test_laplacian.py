"""LaplacianNoise (MedPFL): scale moments, buffers, no mutation, seeding, config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nvflare_gia.defenses import DefenseContext, LaplacianNoise, LaplacianNoiseConfig
from nvflare_gia.defenses.laplacian import fill_laplace
from nvflare_gia.errors import ConfigError, DataError


def test_laplace_noise_has_scale_b_moments(cxr_case):
    b = 2e-4
    update = cxr_case.update
    outcome = LaplacianNoise(LaplacianNoiseConfig(b=b, seed=0)).apply(update)
    keys = [k for k, v in update.items() if v.dtype.kind == "f"]
    noise = np.concatenate([(outcome.update[k].astype(np.float64) - update[k].astype(np.float64)).ravel() for k in keys])
    assert abs(noise.mean()) < 4 * np.sqrt(2) * b / np.sqrt(noise.size)
    assert np.abs(noise).mean() == pytest.approx(b, rel=0.03)  # E|X| = b
    assert noise.var() == pytest.approx(2 * b * b, rel=0.06)  # Var X = 2 b²
    assert outcome.params["b"] == b
    assert outcome.noise_norm == pytest.approx(np.linalg.norm(noise), rel=1e-3)


def test_fill_laplace_matches_the_laplace_distribution():
    buffer = torch.empty(400_000)
    fill_laplace(buffer, 1.0, torch.Generator().manual_seed(0))
    x = buffer.numpy().astype(np.float64)
    assert np.isfinite(x).all()
    assert np.median(np.abs(x)) == pytest.approx(np.log(2.0), rel=0.02)  # median |X| = b ln 2
    assert np.mean(x > 3.0) == pytest.approx(0.5 * np.exp(-3.0), rel=0.08)  # tail P(X > t) = e^{-t}/2


def test_laplace_noise_leaves_integer_buffers_untouched(cxr_case):
    outcome = LaplacianNoise(LaplacianNoiseConfig(seed=0)).apply(cxr_case.update)
    for key, value in cxr_case.update.items():
        if key.endswith("num_batches_tracked"):
            assert outcome.update[key].dtype == value.dtype and np.array_equal(outcome.update[key], value)


@pytest.mark.parametrize("perturb_bn_stats", [True, False])
def test_laplace_noise_honours_perturb_bn_stats(toy_update, perturb_bn_stats):
    outcome = LaplacianNoise(LaplacianNoiseConfig(perturb_bn_stats=perturb_bn_stats, seed=0)).apply(toy_update)
    for key in ("bn.running_mean", "bn.running_var"):
        assert (not np.array_equal(outcome.update[key], toy_update[key])) == perturb_bn_stats
    assert not np.array_equal(outcome.update["bn.weight"], toy_update["bn.weight"])


def test_laplace_noise_does_not_mutate_input_numpy_or_torch(toy_update):
    numpy_update = {k: v.copy() for k, v in toy_update.items()}
    torch_update = {k: torch.from_numpy(v.copy()) for k, v in toy_update.items()}
    defense = LaplacianNoise(LaplacianNoiseConfig(seed=0))
    out_np = defense.apply(numpy_update).update
    out_t = defense.apply(torch_update).update
    for key, value in toy_update.items():
        assert np.array_equal(numpy_update[key], value)
        assert np.array_equal(torch_update[key].numpy(), value)
        assert isinstance(out_np[key], np.ndarray) and out_np[key].dtype == value.dtype
        assert isinstance(out_t[key], torch.Tensor) and out_t[key].dtype == torch_update[key].dtype


def test_laplace_noise_is_reproducible_with_a_seed_and_differs_between_rounds(toy_update):
    runs = []
    for _ in range(2):
        defense = LaplacianNoise(LaplacianNoiseConfig(seed=5))
        runs.append([defense.apply(toy_update, context=DefenseContext(round_index=r)).update["conv.weight"] for r in (0, 1)])
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][0], runs[0][1])


def test_laplace_noise_rejects_non_finite_and_wrong_shapes(toy_update):
    bad = dict(toy_update, **{"bn.weight": np.full(16, np.nan, dtype=np.float32)})
    with pytest.raises(DataError, match=r"update\['bn.weight'\] has 16 non-finite"):
        LaplacianNoise(LaplacianNoiseConfig(seed=0)).apply(bad)
    global_state = dict(toy_update, **{"bn.weight": np.zeros(8, dtype=np.float32)})
    with pytest.raises(DataError, match=r"\(16,\); global model has \(8,\)"):
        LaplacianNoise(LaplacianNoiseConfig(seed=0)).apply(toy_update, global_state=global_state)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"b": 0.0}, ConfigError, r"LaplacianNoiseConfig: b must be in \(0, inf\], got 0.0."),
        ({"b": float("inf")}, ConfigError, "finite"),
        ({"b": True}, TypeError, "b must be a number"),
        ({"perturb_bn_stats": "yes"}, TypeError, "perturb_bn_stats"),
        ({"seed": -3}, ConfigError, "seed"),
    ],
)
def test_laplace_config_rejects_bad_values(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        LaplacianNoiseConfig(**kwargs)
