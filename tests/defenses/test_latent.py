"""LatentPerturbation: a bounded change of the update, exact replay, a weaker attack, fail-closed errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nvflare_gia.defenses import LatentPerturbation, LatentPerturbationConfig
from nvflare_gia.defenses import latent as latent_module
from nvflare_gia.defenses._replay import LatentShift, build_shadow, replay_update
from nvflare_gia.errors import ConfigError, DataError


def _relative_change(a: dict, b: dict, keys) -> float:
    diff = sum(np.sum((np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)) ** 2) for k in keys)
    return float(np.sqrt(diff / sum(np.sum(np.asarray(b[k], np.float64) ** 2) for k in keys)))


def test_latent_replay_with_zero_shift_reproduces_the_clients_update(small_site_case):
    case = small_site_case
    context = case.context()
    model, global_tensors = build_shadow(case.global_state, context, "test")
    images = torch.from_numpy(np.array(case.images))
    labels = torch.from_numpy(np.array(case.labels))
    zeros = torch.zeros(len(images), 16, 32, 32)
    replay = replay_update(
        global_tensors, context, LatentShift.with_index_channel(images), labels,
        wrap=lambda net: LatentShift(net, dict(net.named_modules())["features.3"], zeros),
    )
    for key, value in case.update.items():
        np.testing.assert_allclose(replay[key].numpy(), value, rtol=0, atol=1e-7, err_msg=key)


def test_latent_perturbation_changes_the_update_in_a_bounded_way(small_site_case, parameter_keys, cosine):
    case = small_site_case
    config = LatentPerturbationConfig(seed=0)
    outcome = LatentPerturbation(config).apply(case.update, global_state=case.global_state, context=case.context())
    change = _relative_change(outcome.update, case.update, parameter_keys)
    assert 1e-4 < change < 1.0, change
    assert cosine(outcome.update, case.update, parameter_keys) > 0.5
    params = outcome.params
    assert 0 < params["relative_shift"] <= config.epsilon + 1e-5
    assert params["perturbed_loss"] - params["clean_loss"] <= config.task_loss_bound + 1e-6
    assert params["attacker_relative_error"] > 0
    assert params["split_layer"] == "features.3"
    floats = [k for k, v in case.update.items() if v.dtype.kind == "f"]
    norm = np.sqrt(sum(np.sum((outcome.update[k].astype(np.float64) - case.update[k]) ** 2) for k in floats))
    assert outcome.noise_norm == pytest.approx(norm, rel=1e-3)


def test_latent_perturbation_leaves_layers_before_the_split_and_counters_alone(high_risk_case):
    case = high_risk_case  # one image, one step: BatchNorm before the split sees exactly the client's batch
    outcome = LatentPerturbation(LatentPerturbationConfig(seed=0)).apply(case.update, global_state=case.global_state, context=case.context())
    for key in ("features.1.running_mean", "features.1.running_var", "features.1.num_batches_tracked"):
        np.testing.assert_allclose(outcome.update[key], case.update[key], rtol=0, atol=1e-7, err_msg=key)
    assert not np.allclose(outcome.update["features.5.running_mean"], case.update["features.5.running_mean"], rtol=0, atol=1e-7)
    assert outcome.update["features.1.num_batches_tracked"].dtype == np.int64


def test_latent_perturbation_reduces_a_short_attacks_ssim(high_risk_case, attack_ssim, undefended_ssim, cosine, parameter_keys):
    case = high_risk_case
    outcome = LatentPerturbation(LatentPerturbationConfig(epsilon=0.5, seed=0)).apply(
        case.update, global_state=case.global_state, context=case.context()
    )
    defended_ssim = attack_ssim(outcome.update)
    assert defended_ssim < undefended_ssim - 0.1, (undefended_ssim, defended_ssim)
    assert cosine(outcome.update, case.update, parameter_keys) > 0.5


def test_latent_perturbation_respects_a_tight_task_loss_bound(small_site_case):
    case = small_site_case
    config = LatentPerturbationConfig(epsilon=5.0, task_loss_bound=1e-3, seed=0)
    params = LatentPerturbation(config).apply(case.update, global_state=case.global_state, context=case.context()).params
    assert params["perturbed_loss"] - params["clean_loss"] <= 1e-3 + 1e-6
    assert params["halvings"] in (0, 1, 2, 3)
    assert params["relative_shift"] <= config.epsilon / 2 ** params["halvings"] + 1e-5  # the reported halvings were applied


def _task_loss_growing_with_the_shift(monkeypatch, per_unit_shift: float) -> None:
    """Make the game's task loss exceed the clean loss by ``per_unit_shift`` × the shift's relative norm,
    so that only halving the learned shift can meet the bound."""
    real = latent_module._Game.task_loss

    def task_loss(game, delta):
        loss = real(game, delta)
        if delta is None:
            return loss
        relative = float((delta.detach().flatten(1).norm(dim=1) / game.latent.flatten(1).norm(dim=1)).max())
        return loss.detach().clamp_max(game.clean_loss) + per_unit_shift * relative + 0.0 * delta.sum()

    monkeypatch.setattr(latent_module._Game, "task_loss", task_loss)


def test_latent_perturbation_halves_the_shift_to_meet_the_bound_and_reports_it(small_site_case, monkeypatch):
    case = small_site_case
    config = LatentPerturbationConfig(epsilon=1.0, task_loss_bound=0.3, steps=1, seed=0)
    _task_loss_growing_with_the_shift(monkeypatch, per_unit_shift=1.0)  # 1.0 -> 0.5 -> 0.25 meets 0.3
    params = LatentPerturbation(config).apply(case.update, global_state=case.global_state, context=case.context()).params
    assert params["halvings"] == 2
    assert params["relative_shift"] == pytest.approx(0.25, rel=1e-4)


def test_latent_perturbation_fails_closed_when_the_shift_would_shrink_below_an_eighth(small_site_case, monkeypatch):
    case = small_site_case
    config = LatentPerturbationConfig(epsilon=1.0, task_loss_bound=0.1, steps=1, seed=0)
    _task_loss_growing_with_the_shift(monkeypatch, per_unit_shift=1.0)  # 1/8 still breaks the bound
    with pytest.raises(DataError, match=r"no latent shift of at least 1/8 .*raise task_loss_bound or lower epsilon"):
        LatentPerturbation(config).apply(case.update, global_state=case.global_state, context=case.context())


def test_latent_perturbation_does_not_mutate_torch_input_and_is_reproducible(high_risk_case):
    case = high_risk_case
    update = {k: torch.from_numpy(v.copy()) for k, v in case.update.items()}
    before = {k: v.clone() for k, v in update.items()}
    first = LatentPerturbation(LatentPerturbationConfig(seed=4)).apply(update, global_state=case.global_state, context=case.context())
    second = LatentPerturbation(LatentPerturbationConfig(seed=4)).apply(update, global_state=case.global_state, context=case.context())
    other_round = LatentPerturbation(LatentPerturbationConfig(seed=4)).apply(update, global_state=case.global_state, context=case.context(1))
    for key, value in update.items():
        assert torch.equal(value, before[key])
        assert isinstance(first.update[key], torch.Tensor) and first.update[key].dtype == value.dtype
        assert torch.equal(first.update[key], second.update[key])
    assert not torch.equal(first.update["features.4.weight"], other_round.update["features.4.weight"])


def test_latent_perturbation_fails_closed(high_risk_case):
    case = high_risk_case
    defense = LatentPerturbation(LatentPerturbationConfig(seed=0))
    with pytest.raises(DataError, match="global_state must be"):
        defense.apply(case.update, context=case.context())
    with pytest.raises(DataError, match="context must give"):
        defense.apply(case.update, global_state=case.global_state)
    bad = dict(case.update, **{"classifier.bias": np.array([np.inf, 0.0], dtype=np.float32)})
    with pytest.raises(DataError, match="non-finite"):
        defense.apply(bad, global_state=case.global_state, context=case.context())
    with pytest.raises(ConfigError, match="split_layer must name a module"):
        LatentPerturbation(LatentPerturbationConfig(split_layer="nope", seed=0)).apply(
            case.update, global_state=case.global_state, context=case.context()
        )


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"epsilon": 0}, ConfigError, r"LatentPerturbationConfig: epsilon must be in \(0, inf\], got 0."),
        ({"task_loss_bound": -1.0}, ConfigError, "task_loss_bound"),
        ({"steps": 0}, ConfigError, "steps must be >= 1"),
        ({"attacker_steps": 2.0}, TypeError, "attacker_steps must be an int"),
        ({"split_layer": 3}, ConfigError, "split_layer"),
        ({"num_threads": 0}, ConfigError, "num_threads"),
    ],
)
def test_latent_config_rejects_bad_values(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        LatentPerturbationConfig(**kwargs)


def test_latent_perturbation_restores_the_torch_thread_count(high_risk_case):
    case = high_risk_case
    torch.set_num_threads(2)
    LatentPerturbation(LatentPerturbationConfig(seed=0, num_threads=1)).apply(
        case.update, global_state=case.global_state, context=case.context()
    )
    assert torch.get_num_threads() == 2
