"""BatchNorm statistics over several steps, count-based and soft labels, option look-ups."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from nvflare_gia.attack import (
    AttackConfig,
    GradientInversionAttack,
    LabelStrategy,
    LocalTrainingSimulator,
    ThreatModel,
    biased_variance,
    counts_to_labels,
    ema_step_weights,
    find_classifier,
    look_up_label_strategy,
    look_up_objective,
    look_up_regularizer,
    recover_bn_statistics,
    recover_labels,
    spread_over_batches,
)
from nvflare_gia.errors import ConfigError, DataError
from nvflare_gia.training import TrainingConfig


def test_ema_step_weights_sum_to_one_and_favour_late_steps():
    weights = ema_step_weights(0.1, 3)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[0] < weights[1] < weights[2]
    assert ema_step_weights(0.1, 1).tolist() == [1.0]


def test_bn_statistics_over_two_steps_match_the_simulator_average(xrays, client_round):
    images, labels = xrays[0][:4], xrays[1][:4]
    config = TrainingConfig(local_epochs=2)
    model, global_state, update = client_round(images, labels, 4, config)
    threat = ThreatModel(batch_size=4, num_images=4, training=config)
    recovered = recover_bn_statistics(global_state, update, 0.1, threat.num_steps)
    simulated = LocalTrainingSimulator(model, threat).run(images, labels, create_graph=False).bn_statistics
    for name, stats in recovered.items():
        torch.testing.assert_close(stats.mean, simulated[name].mean.detach(), atol=1e-5, rtol=0)
        torch.testing.assert_close(stats.var, simulated[name].var.detach(), atol=1e-5, rtol=1e-4)


def test_bn_statistics_reject_missing_buffer_and_bad_momentum(xrays, client_round):
    _, global_state, update = client_round(xrays[0][:1], xrays[1][:1], 1)
    with pytest.raises(DataError, match="features.1.running_var"):
        recover_bn_statistics(global_state, {k: v for k, v in update.items() if k != "features.1.running_var"})
    with pytest.raises(ConfigError, match="momentum"):
        recover_bn_statistics(global_state, update, 1.5)


def test_bn_statistics_of_only_the_layers_a_momentum_mapping_names(xrays, client_round):
    """InstanceNorm layers keep running buffers too; the mapping (``bn_momenta`` of the model) says which to read."""
    _, global_state, update = client_round(xrays[0][:1], xrays[1][:1], 1)
    everything = recover_bn_statistics(global_state, update, 0.1)
    named = recover_bn_statistics(global_state, update, {"features.5": 0.1})
    assert set(everything) == {"features.1", "features.5", "features.9"} and set(named) == {"features.5"}
    torch.testing.assert_close(named["features.5"].var, everything["features.5"].var, rtol=0, atol=0)
    with pytest.raises(DataError, match="'features.2.running_mean'"):
        recover_bn_statistics(global_state, update, {"features.2": 0.1})


def test_find_classifier_probes_a_logit_bias_outside_a_linear_layer():
    """A 1 x 1 convolution before global pooling adds its bias to the logits as it is; behind a
    softplus it does not, and label recovery must not read it."""
    torch.manual_seed(0)
    body = [torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()]
    conv_head = torch.nn.Sequential(*body)
    assert find_classifier(conv_head, 2, (1, 16, 16)) == "2"
    assert find_classifier(conv_head, 2) is None  # no probe without the input's shape
    assert find_classifier(torch.nn.Sequential(*body, torch.nn.Softplus()), 2, (1, 16, 16)) is None
    assert find_classifier(torch.nn.Sequential(*body, torch.nn.Linear(2, 2)), 2, (1, 16, 16)) == "5"


def test_biased_variance_scales_by_count():
    assert float(biased_variance(torch.tensor(2.0), 4)) == pytest.approx(1.5)


def test_count_labels_correct_on_a_batch_of_four(xrays, client_round):
    images, labels = xrays[0][:4], xrays[1][:4]
    model, global_state, update = client_round(images, labels, 4)
    threat = ThreatModel(batch_size=4, num_images=4)
    bn = recover_bn_statistics(global_state, update, 0.1, 1)
    recovery = recover_labels(model, global_state, update, threat, strategy="analytic", bn_statistics=bn)
    assert recovery.method == "count"
    assert recovery.labels.tolist() == sorted(labels.tolist())
    assert recovery.estimates.sum() == pytest.approx(4.0, abs=1e-6)


def test_labels_fall_back_to_soft_for_adam_with_several_images(xrays, client_round):
    images, labels = xrays[0][:4], xrays[1][:4]
    config = TrainingConfig(optimizer="adam", lr=1e-3)
    model, global_state, update = client_round(images, labels, 4, config)
    recovery = recover_labels(model, global_state, update, ThreatModel(batch_size=4, num_images=4, training=config))
    assert recovery.labels is None and recovery.method == "soft"


def test_labels_sign_survives_adam_at_batch_one(xrays, client_round):
    config = TrainingConfig(optimizer="adam", lr=1e-3)
    model, global_state, update = client_round(xrays[0][:1], torch.tensor([1]), 1, config)
    assert recover_labels(model, global_state, update, ThreatModel(training=config)).labels.tolist() == [1]


def test_counts_to_labels_rounds_to_a_multiset_of_the_right_size():
    assert counts_to_labels(np.array([1.6, 1.7, 0.7]), 4).tolist() == [0, 1, 1, 2]
    assert counts_to_labels(np.array([-1.0, 5.0]), 3).tolist() == [1, 1, 1]


def test_spread_over_batches_gives_each_batch_its_share_of_every_class():
    assert spread_over_batches(np.array([1, 1, 1, 1, 0, 0, 0, 0]), (4, 4)).tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    spread = spread_over_batches(np.array([0] * 6 + [1] * 3 + [2] * 3), (4, 4, 4))
    assert [sorted(spread[i : i + 4].tolist()) for i in (0, 4, 8)] == [[0, 0, 1, 2]] * 3
    uneven = spread_over_batches(np.array([0, 0, 0, 1, 1, 1]), (4, 2))
    assert sorted(uneven[:4].tolist()) == [0, 0, 1, 1] and sorted(uneven[4:].tolist()) == [0, 1]
    with pytest.raises(ValueError, match="sum to 6 labels"):
        spread_over_batches(np.zeros(6, dtype=np.int64), (4, 4))


def test_attack_spreads_the_labels_over_the_steps_so_the_true_round_fits(xrays, client_round):
    """Two steps of two images, each step one image of each class (as the client's shuffle put them).

    Sorted labels ``[0, 0 | 1, 1]`` would ask the replay for one class per step, which no
    arrangement of the true images reproduces; the attack's spread labels ``[0, 1 | 0, 1]`` do.
    """
    images, labels = xrays
    class0, class1 = np.flatnonzero(labels.numpy() == 0)[:2], np.flatnonzero(labels.numpy() == 1)[:2]
    order = torch.randperm(4, generator=torch.Generator().manual_seed(0)).tolist()  # train_local's first shuffle
    by_step = [class0[0], class1[0], class0[1], class1[1]]  # what each shuffled position should hold
    client_order = [0] * 4
    for position, source in zip(order, by_step):
        client_order[position] = source
    model, global_state, update = client_round(images[client_order], labels[client_order], 2)
    threat = ThreatModel(batch_size=2, num_images=4)
    attack = GradientInversionAttack(AttackConfig(max_iterations=1, restarts=1, max_seconds=None))
    result = attack.reconstruct(global_state, update, threat)
    assert [sorted(result.labels[i : i + 2].tolist()) for i in (0, 2)] == [[0, 1], [0, 1]]

    def loss(slots: list[int]) -> float:
        return attack.matching_loss(global_state, update, threat, images[slots], labels[slots])

    assert loss([int(i) for i in by_step]) < 1e-4
    sorted_fits = [loss([a, b, c, d]) for a, b in (class0, class0[::-1]) for c, d in (class1, class1[::-1])]
    assert min(sorted_fits) > 1e-2


def test_option_lookups_suggest_the_closest_name():
    assert look_up_label_strategy("SOFT") is LabelStrategy.SOFT
    with pytest.raises(ConfigError, match="Did you mean 'soft'"):
        look_up_label_strategy("sofft")
    with pytest.raises(ConfigError, match="Did you mean 'cosine'"):
        look_up_objective("cosin")
    with pytest.raises(ConfigError, match="Did you mean 'tv'"):
        look_up_regularizer("tvv")
