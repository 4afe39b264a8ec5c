"""GaussianNoise (TMI 2023): calibration against a hand-computed percentile, noise moments, buffers, seeding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from nvflare_gia.defenses import DefenseContext, GaussianNoise, GaussianNoiseConfig, compute_gaussian_sigma
from nvflare_gia.errors import ConfigError, DataError


def _noise(before: dict, after: dict, keys) -> np.ndarray:
    return np.concatenate([(np.asarray(after[k], dtype=np.float64) - np.asarray(before[k], dtype=np.float64)).ravel() for k in keys])


def test_gaussian_sigma_equals_calibration_on_a_real_cxr_update(cxr_case):
    update = cxr_case.update
    floats = np.concatenate([np.abs(v).ravel() for v in update.values() if v.dtype.kind == "f"])
    expected = 0.1 * np.percentile(floats[floats > 0], 95)
    outcome = GaussianNoise(GaussianNoiseConfig(sigma0=0.1, percentile=95, seed=0)).apply(update)
    assert outcome.params["sigma"] == pytest.approx(expected, rel=1e-6)
    assert outcome.params["calibration"] == "exact"
    assert compute_gaussian_sigma(update, sigma0=0.1, percentile=95) == pytest.approx(expected, rel=1e-6)


def test_gaussian_noise_has_zero_mean_and_calibrated_std(cxr_case):
    update = cxr_case.update
    outcome = GaussianNoise(GaussianNoiseConfig(sigma0=0.5, seed=1)).apply(update)
    keys = [k for k, v in update.items() if v.dtype.kind == "f"]
    noise = _noise(update, outcome.update, keys)
    sigma = outcome.params["sigma"]
    assert noise.size > 20_000
    assert abs(noise.mean()) < 4 * sigma / np.sqrt(noise.size)
    assert noise.std() == pytest.approx(sigma, rel=0.03)
    kurtosis = np.mean((noise / noise.std()) ** 4)
    assert kurtosis == pytest.approx(3.0, abs=0.2)
    assert outcome.noise_norm == pytest.approx(np.linalg.norm(noise), rel=1e-3)


def test_gaussian_noise_leaves_integer_buffers_untouched(cxr_case):
    outcome = GaussianNoise(GaussianNoiseConfig(seed=0)).apply(cxr_case.update)
    counters = [k for k in cxr_case.update if k.endswith("num_batches_tracked")]
    assert counters
    for key in counters:
        assert outcome.update[key].dtype == np.int64
        assert np.array_equal(outcome.update[key], cxr_case.update[key])


def test_gaussian_noise_leaves_float64_counters_untouched(toy_update):
    update = dict(toy_update, **{"bn.num_batches_tracked": np.array(2.0)})
    outcome = GaussianNoise(GaussianNoiseConfig(seed=0)).apply(update)
    assert outcome.update["bn.num_batches_tracked"] == 2.0


@pytest.mark.parametrize("perturb_bn_stats", [True, False])
def test_gaussian_noise_honours_perturb_bn_stats(cxr_case, perturb_bn_stats):
    outcome = GaussianNoise(GaussianNoiseConfig(perturb_bn_stats=perturb_bn_stats, seed=0)).apply(cxr_case.update)
    stats = [k for k in cxr_case.update if k.endswith(("running_mean", "running_var"))]
    assert stats
    for key in stats:
        changed = not np.array_equal(outcome.update[key], cxr_case.update[key])
        assert changed == perturb_bn_stats, key
    assert not np.array_equal(outcome.update["features.0.weight"], cxr_case.update["features.0.weight"])


def test_gaussian_noise_does_not_mutate_input_numpy(toy_update):
    before = {k: v.copy() for k, v in toy_update.items()}
    writable = {k: v.copy() for k, v in toy_update.items()}
    GaussianNoise(GaussianNoiseConfig(seed=0)).apply(writable)
    for key in before:
        assert np.array_equal(writable[key], before[key])


def test_gaussian_noise_does_not_mutate_input_torch_and_keeps_types(toy_update):
    update = {k: torch.from_numpy(v.copy()) for k, v in toy_update.items()}
    update["fc.weight"] = update["fc.weight"].double()
    update["bn.bias"] = update["bn.bias"].half()
    before = {k: v.clone() for k, v in update.items()}
    outcome = GaussianNoise(GaussianNoiseConfig(seed=0)).apply(update)
    for key, value in update.items():
        assert torch.equal(value, before[key])
        assert isinstance(outcome.update[key], torch.Tensor)
        assert outcome.update[key].dtype == value.dtype and outcome.update[key].shape == value.shape
    assert not torch.equal(outcome.update["fc.weight"], update["fc.weight"])


def test_gaussian_noise_keeps_numpy_dtypes(toy_update):
    update = dict(toy_update, **{"fc.weight": toy_update["fc.weight"].astype(np.float64), "bn.bias": toy_update["bn.bias"].astype(np.float16)})
    outcome = GaussianNoise(GaussianNoiseConfig(seed=0)).apply(update)
    for key, value in update.items():
        assert isinstance(outcome.update[key], np.ndarray)
        assert outcome.update[key].dtype == value.dtype and outcome.update[key].shape == value.shape


def test_gaussian_noise_is_reproducible_with_a_seed_and_differs_between_rounds(toy_update):
    first = GaussianNoise(GaussianNoiseConfig(seed=3))
    second = GaussianNoise(GaussianNoiseConfig(seed=3))
    a = [first.apply(toy_update, context=DefenseContext(round_index=r)).update for r in (0, 1)]
    b = [second.apply(toy_update, context=DefenseContext(round_index=r)).update for r in (0, 1)]
    assert np.array_equal(a[0]["conv.weight"], b[0]["conv.weight"])
    assert np.array_equal(a[1]["conv.weight"], b[1]["conv.weight"])
    assert not np.array_equal(a[0]["conv.weight"], a[1]["conv.weight"])


def test_gaussian_noise_differs_between_calls_in_the_same_round(toy_update):
    defense = GaussianNoise(GaussianNoiseConfig(seed=3))
    first, second = (defense.apply(toy_update).update["conv.weight"] for _ in range(2))
    assert not np.array_equal(first, second)


def test_gaussian_noise_without_seed_differs_between_instances(toy_update):
    first = GaussianNoise().apply(toy_update).update["conv.weight"]
    second = GaussianNoise().apply(toy_update).update["conv.weight"]
    assert not np.array_equal(first, second)


def test_gaussian_subsample_calibration_is_close_to_exact():
    rng = np.random.default_rng(0)
    update = {f"layer{i}": rng.laplace(0.0, 1e-3, 400_000).astype(np.float32) for i in range(5)}
    exact = compute_gaussian_sigma(update, sigma0=1.0, percentile=95)
    estimate = compute_gaussian_sigma(update, sigma0=1.0, percentile=95, calibration_samples=100_000, seed=0)
    assert estimate == pytest.approx(exact, rel=0.02)
    outcome = GaussianNoise(GaussianNoiseConfig(sigma0=1.0, calibration_samples=100_000, seed=0)).apply(update)
    assert outcome.params["calibration"].startswith("subsample")
    assert outcome.params["sigma"] == pytest.approx(exact, rel=0.02)


def test_gaussian_noise_rejects_an_all_zero_update(toy_update):
    zeros = {k: np.zeros_like(v) for k, v in toy_update.items()}
    with pytest.raises(DataError, match="non-zero"):
        GaussianNoise(GaussianNoiseConfig(seed=0)).apply(zeros)


def test_gaussian_noise_checks_shapes_against_the_global_model(toy_update):
    global_state = {k: np.zeros_like(v) for k, v in toy_update.items()}
    global_state["fc.weight"] = np.zeros((2, 8), dtype=np.float32)
    with pytest.raises(DataError, match=r"update\['fc.weight'\] has shape \(2, 16\); global model has \(2, 8\)"):
        GaussianNoise(GaussianNoiseConfig(seed=0)).apply(toy_update, global_state=global_state)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_gaussian_noise_rejects_non_finite_updates(toy_update, bad):
    update = dict(toy_update)
    update["fc.weight"] = toy_update["fc.weight"].copy()
    update["fc.weight"][0, 0] = bad
    with pytest.raises(DataError, match="non-finite"):
        GaussianNoise(GaussianNoiseConfig(seed=0)).apply(update)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"sigma0": 0.0}, ConfigError, r"GaussianNoiseConfig: sigma0 must be in \(0, inf\], got 0.0."),
        ({"sigma0": -1.0}, ConfigError, "sigma0"),
        ({"sigma0": float("nan")}, ConfigError, "finite"),
        ({"percentile": 0}, ConfigError, "percentile"),
        ({"percentile": 101}, ConfigError, "percentile"),
        ({"perturb_bn_stats": 1}, TypeError, "perturb_bn_stats must be a bool"),
        ({"seed": -1}, ConfigError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"calibration_samples": 10}, ConfigError, "calibration_samples"),
        ({"sigma0": "0.1"}, TypeError, "sigma0 must be a number"),
    ],
)
def test_gaussian_config_rejects_bad_values(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        GaussianNoiseConfig(**kwargs)


def test_gaussian_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        GaussianNoiseConfig().sigma0 = 1.0  # type: ignore[misc]


def test_gaussian_noise_rejects_a_wrong_context_type(toy_update):
    with pytest.raises(TypeError, match="context must be a DefenseContext"):
        GaussianNoise(GaussianNoiseConfig(seed=0)).apply(toy_update, context={"round_index": 1})


def test_gaussian_noise_does_not_depend_on_the_thread_count():
    rng = np.random.default_rng(1)
    update = {"big": rng.normal(0, 1e-3, 2_500_000).astype(np.float32), "small": rng.normal(0, 1e-3, 100).astype(np.float32)}
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results.append(GaussianNoise(GaussianNoiseConfig(seed=9)).apply(update).update)
    for key in update:
        assert np.array_equal(results[0][key], results[1][key])
    noise = results[0]["big"].astype(np.float64) - update["big"]
    sigma = compute_gaussian_sigma(update, sigma0=0.1, percentile=95)
    assert noise.std() == pytest.approx(sigma, rel=0.01)
    first, second = noise[: 1 << 20], noise[1 << 20 : 2 << 20]
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.01


def test_gaussian_noise_differs_between_entries_of_equal_size():
    update = {"a": np.full(1000, 1e-3, dtype=np.float32), "b": np.full(1000, 1e-3, dtype=np.float32)}
    out = GaussianNoise(GaussianNoiseConfig(seed=0)).apply(update).update
    assert not np.allclose(out["a"] - update["a"], out["b"] - update["b"])
