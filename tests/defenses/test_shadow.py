"""ShadowModelDefense: it cuts a short attack's SSIM, keeps the update's direction, and fails closed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from nvflare_gia.defenses import (
    DefenseContext,
    ShadowModelConfig,
    ShadowModelDefense,
    compute_saliency,
    saliency_mask,
)
from nvflare_gia.errors import ConfigError, DataError
from nvflare_gia.models import SmallCNN


def _norm(update: dict, keys) -> float:
    return float(np.sqrt(sum(np.sum(np.asarray(update[k], dtype=np.float64) ** 2) for k in keys)))


def _diff(a: dict, b: dict, keys) -> dict:
    return {k: np.asarray(a[k], dtype=np.float64) - np.asarray(b[k], dtype=np.float64) for k in keys}


def test_shadow_defense_reduces_a_short_attacks_ssim(high_risk_case, attack_ssim, undefended_ssim, cosine, parameter_keys):
    case = high_risk_case
    outcome = ShadowModelDefense(ShadowModelConfig(seed=0)).apply(case.update, global_state=case.global_state, context=case.context())
    defended_ssim = attack_ssim(outcome.update)
    assert defended_ssim < undefended_ssim - 0.15, (undefended_ssim, defended_ssim)
    assert cosine(outcome.update, case.update, parameter_keys) > 0.5


@pytest.mark.parametrize("saliency", ["gradcam", "input_gradient"])
def test_shadow_injects_budget_times_the_update_norm(small_site_case, parameter_keys, cosine, saliency):
    case = small_site_case
    budget = 0.7
    outcome = ShadowModelDefense(ShadowModelConfig(budget=budget, saliency=saliency, seed=0)).apply(
        case.update, global_state=case.global_state, context=case.context()
    )
    injected = _norm(_diff(outcome.update, case.update, parameter_keys), parameter_keys)
    assert injected == pytest.approx(budget * _norm(case.update, parameter_keys), rel=1e-3)
    assert outcome.params["update_norm"] == pytest.approx(_norm(case.update, parameter_keys), rel=1e-5)
    assert cosine(outcome.update, case.update, parameter_keys) > 0.5
    floats = [k for k, v in case.update.items() if v.dtype.kind == "f"]
    assert outcome.noise_norm == pytest.approx(_norm(_diff(outcome.update, case.update, floats), floats), rel=1e-3)


def test_shadow_treats_bn_statistics_and_leaves_counters(small_site_case):
    case = small_site_case
    outcome = ShadowModelDefense(ShadowModelConfig(seed=0)).apply(case.update, global_state=case.global_state, context=case.context())
    for key, value in case.update.items():
        assert outcome.update[key].dtype == value.dtype and outcome.update[key].shape == value.shape
        if key.endswith("num_batches_tracked"):
            assert np.array_equal(outcome.update[key], value)
        elif key.endswith(("running_mean", "running_var")):
            assert not np.array_equal(outcome.update[key], value), key


def test_shadow_does_not_mutate_torch_input_and_keeps_types(high_risk_case):
    case = high_risk_case
    update = {k: torch.from_numpy(v.copy()) for k, v in case.update.items()}
    before = {k: v.clone() for k, v in update.items()}
    outcome = ShadowModelDefense(ShadowModelConfig(seed=0)).apply(update, global_state=case.global_state, context=case.context())
    for key, value in update.items():
        assert torch.equal(value, before[key])
        assert isinstance(outcome.update[key], torch.Tensor) and outcome.update[key].dtype == value.dtype


def test_shadow_is_reproducible_with_a_seed_and_differs_between_rounds(high_risk_case):
    case = high_risk_case
    key = "features.0.weight"
    runs = []
    for _ in range(2):
        defense = ShadowModelDefense(ShadowModelConfig(seed=11))
        runs.append([defense.apply(case.update, global_state=case.global_state, context=case.context(r)).update[key] for r in (0, 1)])
    assert np.array_equal(runs[0][0], runs[1][0])
    assert not np.array_equal(runs[0][0], runs[0][1])


def test_saliency_mask_keeps_the_top_fraction_of_each_image():
    saliency = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).reshape(2, 1, 4, 5)
    saliency[1] = saliency[1].flip(-1)
    mask = saliency_mask(saliency, 0.1)
    assert mask.shape == saliency.shape and mask.sum(dim=(1, 2, 3)).tolist() == [2.0, 2.0]
    assert mask[0, 0, 3, 4] == 1 and mask[0, 0, 3, 3] == 1
    assert mask[1, 0, 3, 0] == 1 and mask[1, 0, 3, 1] == 1


def test_gradcam_and_input_gradient_give_per_image_maps(high_risk_case):
    model = SmallCNN(init_seed=0)
    images = torch.from_numpy(np.array(high_risk_case.images))
    labels = torch.from_numpy(np.array(high_risk_case.labels))
    for method in ("gradcam", "input_gradient"):
        maps, fallbacks = compute_saliency(model, images, labels, method)
        assert maps.shape == (1, 1, 32, 32) and bool((maps >= 0).all()) and float(maps.max()) > 0
        assert fallbacks == 0
    assert model.training


def test_shadow_fails_closed_without_global_model_or_data(high_risk_case):
    case = high_risk_case
    defense = ShadowModelDefense(ShadowModelConfig(seed=0))
    with pytest.raises(DataError, match="global_state must be the global model"):
        defense.apply(case.update, context=case.context())
    with pytest.raises(DataError, match="context must give"):
        defense.apply(case.update, global_state=case.global_state)
    with pytest.raises(DataError, match=r"missing \['images', 'labels'"):
        defense.apply(case.update, global_state=case.global_state, context=DefenseContext(round_index=0))


def test_shadow_fails_closed_when_the_replay_does_not_match_the_client(small_site_case):
    case = small_site_case
    context = dataclasses.replace(case.context(), batch_size=8)
    with pytest.raises(DataError, match="local steps"):
        ShadowModelDefense(ShadowModelConfig(seed=0)).apply(case.update, global_state=case.global_state, context=context)


def test_shadow_fails_closed_on_a_global_model_of_another_network(high_risk_case):
    case = high_risk_case
    global_state = dict(case.global_state)
    update = dict(case.update)
    global_state["extra.weight"] = np.zeros(3, dtype=np.float32)
    update["extra.weight"] = np.zeros(3, dtype=np.float32)
    with pytest.raises(DataError, match="does not fit network"):
        ShadowModelDefense(ShadowModelConfig(seed=0)).apply(update, global_state=global_state, context=case.context())


def test_shadow_rejects_an_unknown_target_layer(high_risk_case):
    case = high_risk_case
    with pytest.raises(ConfigError, match="target_layer must name a module"):
        ShadowModelDefense(ShadowModelConfig(target_layer="features.99", seed=0)).apply(
            case.update, global_state=case.global_state, context=case.context()
        )


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"budget": 0}, ConfigError, r"ShadowModelConfig: budget must be in \(0, inf\], got 0."),
        ({"mask_fraction": 1.5}, ConfigError, "mask_fraction"),
        ({"mask_fraction": 0.0}, ConfigError, "mask_fraction"),
        ({"saliency": "gradcan"}, ConfigError, "Did you mean 'gradcam'"),
        ({"noise_std": -0.1}, ConfigError, "noise_std"),
        ({"target_layer": ""}, ConfigError, "target_layer"),
        ({"seed": "1"}, TypeError, "seed"),
    ],
)
def test_shadow_config_rejects_bad_values(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        ShadowModelConfig(**kwargs)


def test_replay_of_the_clean_round_reproduces_the_clients_update(small_site_case):
    from nvflare_gia.defenses._replay import build_shadow, replay_update

    case = small_site_case  # 8 images, batch 4: two shuffled steps
    context = case.context()
    _, global_tensors = build_shadow(case.global_state, context, "test")
    replay = replay_update(global_tensors, context, torch.from_numpy(np.array(case.images)), torch.from_numpy(np.array(case.labels)))
    for key, value in case.update.items():
        np.testing.assert_array_equal(replay[key].numpy(), value, err_msg=key)
