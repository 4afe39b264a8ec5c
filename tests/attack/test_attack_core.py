"""The attack's building blocks on real chest X-rays: exact BN statistics and labels, an exact replay
of the client's training, a reconstruction that beats the prior, determinism and clear errors."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nvflare_gia.attack import (
    AttackConfig,
    GradientInversionAttack,
    LocalTrainingSimulator,
    ThreatModel,
    layers_beyond_stride,
    read_dropout_masks,
    recover_bn_statistics,
    recover_labels,
    set_replay_mode,
)
from nvflare_gia.errors import ConfigError, DataError
from nvflare_gia.metrics import evaluate_leakage
from nvflare_gia.training import TrainingConfig, train_local


# one client round of four images: one SGD step, two steps with momentum, two Adam steps
ROUNDS = pytest.mark.parametrize(
    "config, batch_size",
    [(TrainingConfig(), 4), (TrainingConfig(momentum=0.9), 2), (TrainingConfig(optimizer="adam", lr=1e-3), 2)],
    ids=["sgd-1-step", "momentum-2-steps", "adam-2-steps"],
)


def test_bn_statistics_recovered_exactly_from_one_step(xrays, client_round):
    images, labels = xrays[0][:4], xrays[1][:4]
    model, global_state, update = client_round(images, labels, 4)
    recovered = recover_bn_statistics(global_state, update, 0.1, 1)
    # the true batch statistics of each BN layer's input, from forward hooks on the global model
    seen = {}
    hooks = [
        module.register_forward_hook(lambda m, inp, out, name=name: seen.__setitem__(name, inp[0].detach()))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.BatchNorm2d)
    ]
    model.train()
    model(images)
    for hook in hooks:
        hook.remove()
    assert set(recovered) == set(seen)
    for name, activations in seen.items():
        torch.testing.assert_close(recovered[name].mean.double(), activations.mean(dim=(0, 2, 3)).double(), atol=1e-5, rtol=0)
        torch.testing.assert_close(recovered[name].var.double(), activations.var(dim=(0, 2, 3), unbiased=True).double(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("index", range(4))
def test_labels_exact_at_batch_one(xrays, index, client_round):
    images = xrays[0][index : index + 1]
    for forced in (0, 1):  # every class, whatever the image's own label
        model, global_state, update = client_round(images, torch.tensor([forced]), 1)
        recovery = recover_labels(model, global_state, update, ThreatModel(image_size=64))
        assert recovery.labels.tolist() == [forced]


@ROUNDS
def test_simulated_update_equals_the_client_update(xrays, config, batch_size, client_round):
    images, labels = xrays[0][:4], xrays[1][:4]
    model, _, update = client_round(images, labels, batch_size, config)
    threat = ThreatModel(image_size=64, batch_size=batch_size, num_images=4, training=config)
    # train_local shuffles; replay the client's own order (the attacker optimises free dummies anyway)
    order = torch.randperm(4, generator=torch.Generator().manual_seed(config.seed * 100_003))
    simulated = LocalTrainingSimulator(model, threat).run(images[order], labels[order], create_graph=False).update
    assert set(simulated) == set(update)
    for key in update:
        torch.testing.assert_close(simulated[key].float(), update[key].float(), atol=1e-5, rtol=1e-3, msg=key)


def test_tiny_reconstruction_beats_the_flat_prior(xrays, client_round):
    image = F.interpolate(xrays[0][:1], size=16, mode="area")
    _, global_state, update = client_round(image, xrays[1][:1], 1)
    attack = GradientInversionAttack(AttackConfig(max_iterations=300, restarts=1, max_seconds=None, seed=0))
    result = attack.reconstruct(global_state, update, ThreatModel(image_size=16))
    report = evaluate_leakage(result.images, image.numpy(), reconstructed_labels=result.labels, true_labels=xrays[1][:1].numpy())
    assert report.ssim > report.prior_ssim and report.rdlv > 0
    assert report.label_accuracy == 1.0


def test_attack_is_deterministic_under_a_seed(xrays, client_round):
    image = F.interpolate(xrays[0][:1], size=16, mode="area")
    _, global_state, update = client_round(image, xrays[1][:1], 1)
    config = AttackConfig(max_iterations=20, restarts=2, max_seconds=None, seed=3)
    first = GradientInversionAttack(config).reconstruct(global_state, update, ThreatModel(image_size=16))
    second = GradientInversionAttack(config).reconstruct(global_state, update, ThreatModel(image_size=16))
    np.testing.assert_array_equal(first.images, second.images)


def test_attack_does_not_mutate_its_inputs(xrays, client_round):
    image = F.interpolate(xrays[0][:1], size=16, mode="area")
    _, global_state, update = client_round(image, xrays[1][:1], 1)
    before = ({k: v.clone() for k, v in global_state.items()}, {k: v.clone() for k, v in update.items()})
    GradientInversionAttack(AttackConfig(max_iterations=5, restarts=1, max_seconds=None)).reconstruct(global_state, update, ThreatModel(image_size=16))
    for original, now in ((before[0], global_state), (before[1], update)):
        assert all(torch.equal(original[k], now[k]) for k in original)


def test_malformed_update_is_rejected_with_the_key_and_shapes(xrays, client_round):
    image = F.interpolate(xrays[0][:1], size=16, mode="area")
    _, global_state, update = client_round(image, xrays[1][:1], 1)
    attack = GradientInversionAttack(AttackConfig(max_iterations=5, restarts=1, max_seconds=None))
    wrong_shape = {**update, "classifier.weight": torch.zeros(3, 64)}
    with pytest.raises(DataError, match=r"classifier\.weight.*\(3, 64\).*\(2, 64\)|classifier\.weight.*\(2, 64\).*\(3, 64\)"):
        attack.reconstruct(global_state, wrong_shape, ThreatModel(image_size=16))
    missing = {k: v for k, v in update.items() if k != "features.0.weight"}
    with pytest.raises(DataError, match=r"features\.0\.weight"):
        attack.reconstruct(global_state, missing, ThreatModel(image_size=16))
    nan = {**update, "features.0.weight": torch.full_like(update["features.0.weight"], float("nan"))}
    with pytest.raises(DataError):
        attack.reconstruct(global_state, nan, ThreatModel(image_size=16))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"objective": "l3"}, "objective"), ({"max_iterations": 0}, "max_iterations"), ({"restarts": 0}, "restarts"), ({"max_seconds": -1.0}, "max_seconds")],
)
def test_attack_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AttackConfig(**kwargs)


def test_matching_loss_is_about_zero_at_the_truth_and_not_at_a_moved_image(xrays, client_round):
    """The update pins the image: the true image reproduces it; the same image shifted or mirrored does not."""
    images, labels = xrays[0][:1], xrays[1][:1]
    _, global_state, update = client_round(images, labels, 1)
    attack = GradientInversionAttack(AttackConfig(device="cpu"))
    threat = ThreatModel()
    truth = attack.matching_loss(global_state, update, threat, images, labels)
    shifted = attack.matching_loss(global_state, update, threat, torch.roll(images, 8, dims=-1), labels)
    mirrored = attack.matching_loss(global_state, update, threat, images.flip(-1), labels)
    assert truth < 1e-3
    assert shifted > 100 * truth and mirrored > 100 * truth


@pytest.mark.parametrize(
    ("images_shape", "labels", "match"),
    [
        ((2, 1, 64, 64), [0], "images must be finite with shape"),
        ((1, 1, 64, 64), [0, 1], "labels must be 1 integers"),
        ((1, 1, 64, 64), [2], "labels must be 1 integers in \\[0, 2\\)"),
        ((1, 1, 64, 64), [0.5], "labels must be"),
    ],
)
def test_matching_loss_names_bad_images_and_labels(xrays, client_round, images_shape, labels, match):
    _, global_state, update = client_round(xrays[0][:1], xrays[1][:1], 1)
    with pytest.raises(DataError, match=match):
        GradientInversionAttack(AttackConfig(device="cpu")).matching_loss(
            global_state, update, ThreatModel(), torch.rand(images_shape), np.array(labels)
        )


def test_matching_loss_rejects_images_outside_the_unit_range(xrays, client_round):
    _, global_state, update = client_round(xrays[0][:1], xrays[1][:1], 1)
    with pytest.raises(DataError, match="images must be in \\[0, 1\\]"):
        GradientInversionAttack(AttackConfig(device="cpu")).matching_loss(
            global_state, update, ThreatModel(), 255.0 * xrays[0][:1], xrays[1][:1]
        )


@ROUNDS
def test_matched_params_replay_only_those_parameters_and_exactly(xrays, config, batch_size, client_round):
    """Earlier steps still update every parameter; only the last step's gradients are restricted."""
    images, labels = xrays[0][:4], xrays[1][:4]
    model, _, _ = client_round(images, labels, batch_size, config)
    threat = ThreatModel(image_size=64, batch_size=batch_size, num_images=4, training=config)
    full = LocalTrainingSimulator(model, threat).run(images, labels, create_graph=False)
    chosen = ["features.0.weight", "features.5.bias", "classifier.weight"]
    part = LocalTrainingSimulator(model, threat, matched_params=chosen).run(images, labels, create_graph=False)
    params = {n for n, _ in model.named_parameters()}
    assert set(part.update) == set(full.update) - (params - set(chosen))
    for key in part.update:
        torch.testing.assert_close(part.update[key], full.update[key], atol=1e-7, rtol=1e-6, msg=key)
    with pytest.raises(DataError, match="matched_params.*'nope'"):
        LocalTrainingSimulator(model, threat, matched_params=["nope"])


def _dropout_network(p: float) -> torch.nn.Sequential:
    """BatchNorm, InstanceNorm with running statistics, and dropout before the classifier."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.InstanceNorm2d(8, affine=True, track_running_stats=True),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Dropout(p), torch.nn.Linear(32, 2),
    )


def test_replay_keeps_normalisation_in_train_mode_and_dropout_at_its_expectation(xrays):
    """The replay of a network with dropout is deterministic and equals the client's round without
    the random drops; BatchNorm and InstanceNorm normalise with batch statistics as in training."""
    images, labels = xrays[0][:4], xrays[1][:4]
    client = _dropout_network(0.0)
    global_state = {k: v.clone() for k, v in client.state_dict().items()}
    train_local(client, images, labels, 2, TrainingConfig())
    update = {k: v - global_state[k] for k, v in client.state_dict().items()}
    network = _dropout_network(0.5)
    modes = {type(m).__name__: m.training for m in set_replay_mode(network).modules()}
    assert modes["BatchNorm2d"] and modes["InstanceNorm2d"] and not modes["Dropout"] and not modes["Conv2d"]
    threat = ThreatModel(image_size=64, batch_size=2, num_images=4)
    order = torch.randperm(4, generator=torch.Generator().manual_seed(TrainingConfig().seed * 100_003))
    simulator = LocalTrainingSimulator(network.train(), threat)
    first = simulator.run(images[order], labels[order], create_graph=False).update
    second = simulator.run(images[order], labels[order], create_graph=False).update
    assert set(first) == set(update)
    for key in update:
        torch.testing.assert_close(first[key].float(), update[key].float(), atol=1e-5, rtol=1e-3, msg=key)
        assert torch.equal(first[key], second[key]), key


@pytest.mark.parametrize(
    "config",
    [TrainingConfig(), TrainingConfig(momentum=0.9, weight_decay=1e-3), TrainingConfig(optimizer="adam", lr=1e-3, weight_decay=1e-4)],
    ids=["sgd", "momentum-weight-decay", "adam-weight-decay"],
)
def test_dropout_mask_of_a_one_image_round_is_read_off_the_update(xrays, config):
    """One image, one step: the features the client dropped before the classifier have a zero
    gradient column, so the mask is read exactly and the replay reproduces the update."""
    image, label = xrays[0][:1], xrays[1][:1]
    client = _dropout_network(0.5)
    global_state = {k: v.clone() for k, v in client.state_dict().items()}
    seen = []
    client[-2].register_forward_hook(lambda module, inputs, output: seen.append((output != 0).float() / 0.5))
    torch.manual_seed(3)
    train_local(client, image, label, 1, config)
    update = {k: v - global_state[k] for k, v in client.state_dict().items()}
    threat = ThreatModel(image_size=64, training=config)
    network = _dropout_network(0.5)
    masks = read_dropout_masks(network, global_state, update, threat)
    assert list(masks) == ["8"] and 0 < int(seen[0].sum()) < 32 * 2
    torch.testing.assert_close(masks["8"], seen[0], rtol=0, atol=0)
    replayed = LocalTrainingSimulator(network, threat, dropout_masks=masks).run(image, label, create_graph=False).update
    for key in update:
        torch.testing.assert_close(replayed[key].float(), update[key].float(), atol=1e-6, rtol=1e-4, msg=key)
    two_steps = ThreatModel(image_size=64, batch_size=1, num_images=2, training=config)
    assert read_dropout_masks(network, global_state, update, two_steps) == {}


def test_layers_beyond_stride_follow_the_feature_maps():
    """SmallCNN keeps every layer at stride 4 (64 and 28 pixels); ResNet-18 at 64 pixels loses
    layer3 (8x8) and layer4 (4x4) but keeps layer2 (16x16) and the classifier."""
    from nvflare_gia.models import build_model

    small = build_model("small_cnn", num_classes=2, in_channels=1)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    layers = {name for name, module in small.named_modules() if list(module.parameters(recurse=False))}
    assert layers_beyond_stride(small, 1, 64, 4) & layers == set() and layers_beyond_stride(small, 1, 28, 4) & layers == set()
    assert layers_beyond_stride(small, 1, 64, 2) & layers == {"features.8", "features.9"}
    assert "pool" in layers_beyond_stride(small, 1, 64, 4)  # global pooling: 1x1, but it has nothing to match
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())
    deep = layers_beyond_stride(build_model("resnet18", num_classes=2, in_channels=1), 1, 64, 4)
    assert {"layer3", "layer3.0.bn1", "layer4", "layer4.1.conv2"} <= deep
    assert not any(name.startswith(("layer2", "layer1", "conv1", "bn1", "fc")) for name in deep)
    with pytest.raises(ConfigError, match="max_feature_stride"):
        AttackConfig(max_feature_stride=0)
