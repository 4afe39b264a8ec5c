"""The attack on networks of other shapes than ``SmallCNN``'s, named by dotted path as a job's own
network: the replay reproduces the client's update exactly (the true image's matching loss is about
0), labels are read off the logits' bias whether a linear layer or a convolution holds it, and
dropout is replayed with the client's mask where the update shows it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nvflare_gia.attack import NUM_STEPS_META_KEY, TRAINING_META_KEY, AttackConfig, GradientInversionAttack, ThreatModel
from nvflare_gia.models import build_model
from nvflare_gia.training import TrainingConfig, epoch_orders, train_local, training_meta

NETWORKS = ["conv_head", "group_norm", "unusual_norms", "monai_classifier", "module_list"]


def _client_round(path: str, image: torch.Tensor, label: torch.Tensor, config: TrainingConfig):
    """The global state, the update and the meta of a client round of the network at ``path``
    (batch 1: one step per image and epoch)."""
    torch.manual_seed(0)
    model = build_model(path, num_classes=2, in_channels=1)
    global_state = copy.deepcopy(model.state_dict())
    steps = train_local(model, image, label, 1, config)
    update = {k: v - global_state[k] for k, v in model.state_dict().items()}
    meta = {NUM_STEPS_META_KEY: steps, TRAINING_META_KEY: training_meta(config, path, image, 2, 1)}
    return global_state, update, meta


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("config", [TrainingConfig(), TrainingConfig(momentum=0.9, local_epochs=2)], ids=["1-step", "2-steps-momentum"])
def test_replay_of_a_jobs_own_network_is_exact(xrays, varied_networks, name, config):
    path = f"{varied_networks}.{name}"
    image = F.interpolate(xrays[0][:1], size=32, mode="area")
    label = xrays[1][:1]
    global_state, update, meta = _client_round(path, image, label, config)
    threat = ThreatModel.from_meta(meta, networks=[path])
    attack = GradientInversionAttack(AttackConfig(device="cpu"))
    truth = attack.matching_loss(global_state, update, threat, image, label)
    moved = attack.matching_loss(global_state, update, threat, torch.roll(image, 8, dims=-1), label)
    assert truth < 1e-4 and moved > 100 * max(truth, 1e-7)


@pytest.mark.parametrize("name", ["conv_head", "group_norm"])
@pytest.mark.parametrize("index", range(2))
def test_attack_runs_on_a_jobs_own_network_and_recovers_the_label(xrays, varied_networks, name, index):
    """The 1 x 1 convolution before global pooling holds the logits' bias as a linear layer does."""
    path = f"{varied_networks}.{name}"
    image = F.interpolate(xrays[0][index : index + 1], size=32, mode="area")
    label = xrays[1][index : index + 1]
    global_state, update, meta = _client_round(path, image, label, TrainingConfig())
    threat = ThreatModel.from_meta(meta, networks=[path])
    attack = GradientInversionAttack(AttackConfig(max_iterations=300, restarts=1, max_seconds=None, device="cpu", seed=0))
    result = attack.reconstruct(global_state, update, threat)
    assert result.stats["label_method"] == "sign"
    assert result.images.shape == (1, 1, 32, 32) and np.isfinite(result.images).all()
    assert result.labels.tolist() == label.tolist()
    start = attack.matching_loss(global_state, update, threat, torch.full_like(image, 0.5), result.labels)
    assert attack.matching_loss(global_state, update, threat, torch.as_tensor(result.images), result.labels) < start


def test_dropout_is_replayed_with_the_clients_mask_when_the_update_shows_it(xrays, varied_networks):
    """One image, one step: the attack reads the mask, so the truth explains the update. Two images:
    the masks stay unknown, the replay takes their expectation, and the truth's loss is a fixed floor."""
    path = f"{varied_networks}.dropout_head"
    attack = GradientInversionAttack(AttackConfig(device="cpu"))
    images = F.interpolate(xrays[0][:2], size=32, mode="area")
    for count in (1, 2):
        global_state, update, meta = _client_round(path, images[:count], xrays[1][:count], TrainingConfig())
        threat = ThreatModel.from_meta(meta, networks=[path])
        order = epoch_orders(count, TrainingConfig())[0]  # the order train_local visited the images in
        losses = [attack.matching_loss(global_state, update, threat, images[:count][order], xrays[1][:count][order]) for _ in range(2)]
        assert losses[0] == losses[1]
        assert losses[0] < 1e-4 if count == 1 else losses[0] > 1e-2
