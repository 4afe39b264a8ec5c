"""Engine options: restart selection, coarse-to-fine schedule, soft labels, several steps, priors, errors."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nvflare_gia.attack import (
    AttackConfig,
    GradientInversionAttack,
    ThreatModel,
    prior_from_validation,
    resolve_device,
)
from nvflare_gia.errors import ConfigError, DataError
from nvflare_gia.training import TrainingConfig

FAST = {"max_iterations": 30, "max_seconds": None, "restarts": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def tiny(xrays):
    """The first 4 chest X-rays at 16×16."""
    return F.interpolate(xrays[0][:4], size=16, mode="area"), xrays[1][:4]


def test_best_selection_returns_the_lowest_loss_restart(tiny, client_round):
    _, global_state, update = client_round(tiny[0][:1], tiny[1][:1], 1)
    config = AttackConfig(**{**FAST, "restarts": 3, "restart_selection": "best"})
    result = GradientInversionAttack(config).reconstruct(global_state, update, ThreatModel(image_size=16))
    losses = result.stats["restart_losses"]
    assert len(losses) == 3 and result.stats["best_restart"] == int(np.argmin(losses))
    assert result.stats["returned_matching_loss"] == pytest.approx(min(losses), rel=1e-4)


def test_consensus_averages_restarts_and_keeps_labels(tiny, client_round):
    images, labels = tiny[0][:2], tiny[1][:2]
    _, global_state, update = client_round(images, labels, 2)
    threat = ThreatModel(image_size=16, batch_size=2, num_images=2)
    config = AttackConfig(**{**FAST, "restarts": 3, "consensus_tolerance": 1e6})
    result = GradientInversionAttack(config).reconstruct(global_state, update, threat)
    assert result.stats["restarts_combined"] == 3
    assert result.images.shape == (2, 1, 16, 16) and result.images.dtype == np.float32
    assert 0.0 <= result.images.min() and result.images.max() <= 1.0
    assert sorted(result.labels.tolist()) == sorted(labels.tolist())


def test_soft_labels_are_optimised_when_requested(tiny, client_round):
    _, global_state, update = client_round(tiny[0][:2], tiny[1][:2], 2)
    threat = ThreatModel(image_size=16, batch_size=2, num_images=2)
    result = GradientInversionAttack(AttackConfig(**FAST, label_strategy="soft")).reconstruct(global_state, update, threat)
    assert result.stats["label_method"] == "soft"
    assert result.soft_labels.shape == (2, 2)
    np.testing.assert_allclose(result.soft_labels.sum(axis=1), 1.0, atol=1e-5)


def test_attack_runs_on_a_multi_step_adam_round(tiny, client_round):
    config = TrainingConfig(optimizer="adam", lr=1e-3, local_epochs=2)
    _, global_state, update = client_round(tiny[0][:2], tiny[1][:2], 1, config)
    threat = ThreatModel(image_size=16, batch_size=1, num_images=2, training=config)
    result = GradientInversionAttack(AttackConfig(**FAST)).reconstruct(global_state, update, threat)
    assert result.stats["iterations"] == 30 and np.isfinite(result.stats["update_residual"])


def test_attack_accepts_numpy_inputs_and_a_prior(tiny, client_round):
    _, global_state, update = client_round(tiny[0][:1], tiny[1][:1], 1)
    as_numpy = ({k: v.numpy() for k, v in global_state.items()}, {k: v.numpy() for k, v in update.items()})
    prior = np.full((16, 16), 0.4, dtype=np.float32)
    config = AttackConfig(**FAST, init="prior", prior_weight=0.1)
    result = GradientInversionAttack(config).reconstruct(*as_numpy, ThreatModel(image_size=16), prior=prior)
    assert result.labels.tolist() == tiny[1][:1].tolist()


def test_attack_rejects_a_prior_of_the_wrong_shape(tiny, client_round):
    _, global_state, update = client_round(tiny[0][:1], tiny[1][:1], 1)
    with pytest.raises(DataError, match="prior"):
        GradientInversionAttack(AttackConfig(**FAST)).reconstruct(global_state, update, ThreatModel(image_size=16), prior=np.zeros((8, 8)))


def test_retrieval_ranks_the_client_image_first_among_candidates(xrays, client_round):
    images, labels = xrays[0][:1], xrays[1][:1]
    _, global_state, update = client_round(images, labels, 1)
    others = xrays[0][1:8]
    candidates = torch.cat([others[:4], images, others[4:]])  # the client's image at index 4
    config = AttackConfig(**FAST, init="prior", retrieval_k=1)
    result = GradientInversionAttack(config).reconstruct(global_state, update, ThreatModel(), candidates=candidates)
    retrieval = result.stats["retrieval"]
    assert retrieval["ranked"] == 8 and retrieval["indices"] == [4]
    assert retrieval["objective"][0] < 1e-3
    # The retrieved prior is the client's image, so the attack starting from it stays close to it.
    assert float(np.abs(result.images - images.numpy()).mean()) < 0.1


def test_retrieval_prior_is_the_mean_of_the_best_candidates(xrays, client_round):
    images, labels = xrays[0][:1], xrays[1][:1]
    _, global_state, update = client_round(images, labels, 1)
    candidates = xrays[0][1:8]
    config = AttackConfig(**{**FAST, "max_iterations": 1}, init="prior", retrieval_k=3, prior_weight=0.0)
    result = GradientInversionAttack(config).reconstruct(global_state, update, ThreatModel(), candidates=candidates)
    retrieval = result.stats["retrieval"]
    # By hand: without the BN term the matching loss is the objective of the candidate's update.
    objective_only = GradientInversionAttack(AttackConfig(**FAST, bn_weight=0.0))
    by_hand = np.array([objective_only.matching_loss(global_state, update, ThreatModel(), c[None], labels) for c in candidates])
    best = np.argsort(by_hand)[:3]
    assert retrieval["indices"] == best.tolist()
    np.testing.assert_allclose(retrieval["objective"], by_hand[best], rtol=1e-5)
    # One iteration from the retrieved prior stays near the mean of the chosen candidates.
    chosen_mean = candidates[best].mean(dim=0).numpy()
    assert float(np.abs(result.images[0] - chosen_mean).mean()) < 0.05


def test_retrieval_stops_ranking_when_its_time_share_is_spent(tiny, client_round):
    _, global_state, update = client_round(tiny[0][:1], tiny[1][:1], 1)
    candidates = tiny[0].repeat(16, 1, 1, 1)  # 64 candidates
    # 0.1 % of 2 s is spent before the first candidate: only the retrieval_k required ones are ranked.
    config = AttackConfig(max_iterations=5, max_seconds=2.0, restarts=1, device="cpu", retrieval_k=3, retrieval_share=0.001)
    result = GradientInversionAttack(config).reconstruct(global_state, update, ThreatModel(image_size=16), candidates=candidates)
    assert result.stats["retrieval"]["ranked"] == 3
    unbounded = AttackConfig(**FAST, retrieval_k=3)
    result = GradientInversionAttack(unbounded).reconstruct(global_state, update, ThreatModel(image_size=16), candidates=candidates)
    assert result.stats["retrieval"]["ranked"] == 64


def test_candidates_are_ignored_for_several_images_and_validated(tiny, client_round, caplog):
    _, global_state, update = client_round(tiny[0][:2], tiny[1][:2], 2)
    threat = ThreatModel(image_size=16, batch_size=2, num_images=2)
    with caplog.at_level(logging.INFO, logger="nvflare_gia.attack.engine"):
        result = GradientInversionAttack(AttackConfig(**FAST)).reconstruct(global_state, update, threat, candidates=tiny[0])
    assert "retrieval" not in result.stats
    assert any("not used" in record.getMessage() for record in caplog.records)
    with pytest.raises(DataError, match="candidates"):
        GradientInversionAttack(AttackConfig(**FAST)).reconstruct(global_state, update, threat, candidates=tiny[0][:, :, :8])
    with pytest.raises(DataError, match="candidate values"):
        GradientInversionAttack(AttackConfig(**FAST)).reconstruct(global_state, update, threat, candidates=tiny[0] + 2.0)


def test_prior_from_validation_maps_each_prior_name():
    val_images = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
    assert prior_from_validation("flat", None) == (None, None)
    mean, candidates = prior_from_validation("val_mean", val_images)
    np.testing.assert_allclose(mean, val_images.mean(axis=0))
    assert candidates is None
    mean, candidates = prior_from_validation("val_retrieval", val_images)
    np.testing.assert_allclose(mean, val_images.mean(axis=0))
    assert candidates is val_images
    with pytest.raises(ConfigError, match=r"prior must be one of \['flat', 'val_mean', 'val_retrieval'\], got 'mean'"):
        prior_from_validation("mean", val_images)


def test_prior_weight_pulls_only_toward_a_given_prior(tiny, client_round):
    _, global_state, update = client_round(tiny[0][:1], tiny[1][:1], 1)
    threat = ThreatModel(image_size=16)

    def run(prior_weight: float, prior=None) -> np.ndarray:
        config = AttackConfig(**FAST, prior_weight=prior_weight)
        return GradientInversionAttack(config).reconstruct(global_state, update, threat, prior=prior).images

    np.testing.assert_array_equal(run(0.0), run(30.0))  # the flat default is not pulled toward
    given = np.full((16, 16), 0.5, dtype=np.float32)
    assert not np.array_equal(run(0.0, given), run(30.0, given))


def test_attack_rejects_an_update_for_another_model(tiny, client_round):
    _, global_state, update = client_round(tiny[0][:1], tiny[1][:1], 1)
    with pytest.raises(DataError, match="lacks"):
        GradientInversionAttack(AttackConfig(**FAST)).reconstruct(global_state, update, ThreatModel(image_size=16, model="resnet18"))
    with pytest.raises(TypeError, match="threat"):
        GradientInversionAttack(AttackConfig(**FAST)).reconstruct(global_state, update, {"image_size": 16})


def test_time_budget_stops_the_attack_and_logs_progress(tiny, caplog, client_round):
    _, global_state, update = client_round(tiny[0][:1], tiny[1][:1], 1)
    # a log line at every iteration: under load the 1 s budget may leave a restart less than any fixed interval
    config = AttackConfig(max_iterations=10**6, max_seconds=1.0, restarts=2, log_every=1e-6, device="cpu")
    with caplog.at_level(logging.INFO, logger="nvflare_gia.attack.engine"):
        result = GradientInversionAttack(config).reconstruct(global_state, update, ThreatModel(image_size=16))
    assert result.stats["seconds"] < 10.0 and result.stats["iterations"] < 10**6
    assert any("time left" in record.getMessage() for record in caplog.records)


def test_num_threads_is_restored(tiny, client_round):
    _, global_state, update = client_round(tiny[0][:1], tiny[1][:1], 1)
    before = torch.get_num_threads()
    GradientInversionAttack(AttackConfig(**FAST, num_threads=1)).reconstruct(global_state, update, ThreatModel(image_size=16))
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scale_factors": (2, 4, 1)}, "scale_factors"),
        ({"scale_factors": (4, 2)}, "scale_factors"),
        ({"scale_factors": (2, 1), "scale_fractions": (0.3, 0.3, 0.4)}, "scale_fractions"),
        ({"scale_fractions": (0.5, 0.5, 0.5)}, "scale_fractions"),
        ({"restart_selection": "bset"}, "Did you mean 'best'"),
        ({"device": "gpu"}, "device"),
        ({"parametrization": "sigmoidd"}, "Did you mean 'sigmoid'"),
        ({"label_strategy": "hard"}, "label_strategy"),
        ({"tv_weight": -1.0}, "tv_weight"),
        ({"lr": 0.0}, "lr"),
        ({"consensus_tolerance": 0.5}, "consensus_tolerance"),
        ({"num_threads": 0}, "num_threads"),
        ({"lr_decay": 2.0}, "lr_decay"),
        ({"min_restart_iterations": 0}, "min_restart_iterations"),
        ({"parallel_restarts": 0}, "parallel_restarts must be an integer >= 1"),
        ({"parallel_restarts": 1.5}, "parallel_restarts"),
        ({"retrieval_k": 0}, "retrieval_k must be an integer >= 1"),
        ({"retrieval_share": 0.0}, r"retrieval_share must be > 0.0 and <= 1.0"),
        ({"retrieval_share": 1.5}, "retrieval_share"),
    ],
)
def test_attack_config_rejects_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AttackConfig(**kwargs)


def test_resolve_device_auto_and_missing_cuda():
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device("cuda")


@pytest.mark.parametrize("parallel_restarts", [1, 2])
def test_time_budget_runs_fewer_restarts_when_each_would_be_too_short(tiny, client_round, parallel_restarts):
    _, global_state, update = client_round(tiny[0][:1], tiny[1][:1], 1)
    config = AttackConfig(max_seconds=1.0, restarts=5, min_restart_iterations=10**6, parallel_restarts=parallel_restarts, device="cpu")
    result = GradientInversionAttack(config).reconstruct(global_state, update, ThreatModel(image_size=16))
    # one restart per thread: a thread's restart does not shorten another thread's
    assert len(result.stats["restart_losses"]) == parallel_restarts


@pytest.mark.parametrize(
    "label_strategy, batch_size, training",
    [("auto", 2, TrainingConfig()), ("soft", 1, TrainingConfig(optimizer="adam", lr=1e-3, local_epochs=2))],
    ids=["one-step", "soft-labels-four-adam-steps"],
)
def test_parallel_restarts_return_what_one_thread_returns(tiny, client_round, caplog, label_strategy, batch_size, training):
    images, labels = tiny[0][:2], tiny[1][:2]
    _, global_state, update = client_round(images, labels, batch_size, training)
    threat = ThreatModel(image_size=16, batch_size=batch_size, num_images=2, training=training)
    results = {}
    for threads in (1, 2):
        config = AttackConfig(**{**FAST, "restarts": 3, "parallel_restarts": threads, "label_strategy": label_strategy})
        with caplog.at_level(logging.INFO, logger="nvflare_gia.attack.engine"):
            caplog.clear()
            results[threads] = GradientInversionAttack(config).reconstruct(global_state, update, threat)
    # the second run's restarts ran on two worker threads, each on its own replay (a shared replay mixes their steps)
    finished_on = {r.threadName for r in caplog.records if "finished after" in r.getMessage()}
    assert len(finished_on) == 2 and all(name.startswith("gia-restart") for name in finished_on)
    assert results[2].stats["restart_losses"] == results[1].stats["restart_losses"]
    np.testing.assert_array_equal(results[2].images, results[1].images)
    assert results[2].stats["iterations"] == 3 * FAST["max_iterations"]


def test_parallel_restarts_share_the_time_budget(tiny, client_round, caplog):
    _, global_state, update = client_round(tiny[0][:1], tiny[1][:1], 1)
    config = AttackConfig(max_iterations=10**6, max_seconds=2.0, restarts=4, parallel_restarts=2, min_restart_iterations=1, device="cpu")
    with caplog.at_level(logging.INFO, logger="nvflare_gia.attack.engine"):
        result = GradientInversionAttack(config).reconstruct(global_state, update, ThreatModel(image_size=16))
    assert len(result.stats["restart_losses"]) == 4 and np.isfinite(result.stats["restart_losses"]).all()
    assert result.stats["seconds"] < 10.0
    # restarts 0 and 2 on one thread, 1 and 3 on the other (logged 1-based): each splits its thread's budget
    finished = {}
    for record in caplog.records:
        if "finished after" in record.getMessage():
            finished.setdefault(record.threadName, []).append(int(record.getMessage().split()[1].split("/")[0]))
    assert sorted(sorted(restarts) for restarts in finished.values()) == [[1, 3], [2, 4]]


def test_an_error_in_a_restart_thread_reaches_the_caller(tiny, client_round, monkeypatch):
    _, global_state, update = client_round(tiny[0][:1], tiny[1][:1], 1)
    run_restart = GradientInversionAttack._run_restart

    def failing(self, restart, *args, **kwargs):
        if restart == 1:
            raise RuntimeError("restart 1 failed")
        return run_restart(self, restart, *args, **kwargs)

    monkeypatch.setattr(GradientInversionAttack, "_run_restart", failing)
    config = AttackConfig(**{**FAST, "restarts": 2, "parallel_restarts": 2})
    with pytest.raises(RuntimeError, match="restart 1 failed"):
        GradientInversionAttack(config).reconstruct(global_state, update, ThreatModel(image_size=16))


@pytest.mark.parametrize("parallel_restarts", [1, 2])
def test_should_stop_ends_an_attack_in_flight(tiny, client_round, parallel_restarts):
    _, global_state, update = client_round(tiny[0][:1], tiny[1][:1], 1)
    stop = threading.Event()
    config = AttackConfig(max_seconds=900.0, max_iterations=10**8, restarts=2, parallel_restarts=parallel_restarts, device="cpu")
    attack = GradientInversionAttack(config, should_stop=stop.is_set)
    results = []
    runner = threading.Thread(target=lambda: results.append(attack.reconstruct(global_state, update, ThreatModel(image_size=16))))
    runner.start()
    time.sleep(1.0)  # the attack is under way (set up, calibrated, optimising)
    stop.set()
    runner.join(120)  # the budget is 900 s: only the stop request ends it this soon
    assert not runner.is_alive()
    assert results[0].stats["stopped"] is True and results[0].stats["iterations"] >= 1
    assert results[0].images.shape == (1, 1, 16, 16) and np.isfinite(results[0].images).all()


def test_should_stop_must_be_callable():
    with pytest.raises(TypeError, match="should_stop must be None or callable"):
        GradientInversionAttack(AttackConfig(), should_stop=True)
