"""The defense contract's context: ``DefenseContext`` validation and normalisation."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch

from nvflare_gia.attack import ThreatModel
from nvflare_gia.defenses import DefenseContext
from nvflare_gia.defenses.latent import LatentPerturbation, LatentPerturbationConfig
from nvflare_gia.defenses.self_audit import threat_from_context
from nvflare_gia.defenses.shadow import ShadowModelConfig, ShadowModelDefense
from nvflare_gia.errors import DataError
from nvflare_gia.models import build_model
from nvflare_gia.training import TrainingConfig, train_local


def test_defense_context_stores_numpy_ints_as_python_ints():
    images = np.zeros((2, 1, 16, 16), dtype=np.float32)
    context = DefenseContext(
        round_index=np.int64(3), images=images, labels=np.array([0, 1]), batch_size=np.int64(2),
        training=TrainingConfig(), model="small_cnn", num_classes=np.int64(2), in_channels=np.int32(1),
    )
    for name in ("round_index", "batch_size", "num_classes", "in_channels"):
        assert type(getattr(context, name)) is int, name
    # the self-audit builds its threat model from the context; ThreatModel accepts Python ints only
    assert isinstance(threat_from_context(context), ThreatModel)


def _two_image_round(path: str, image_size: int) -> tuple[dict, dict, DefenseContext]:
    """A client round of the network at ``path`` on two random images: global state, update, context."""
    model = build_model(path, init_seed=0)
    start = copy.deepcopy(model.state_dict())
    images = torch.rand(2, 1, image_size, image_size, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1])
    train_local(model, images, labels, 2, TrainingConfig())
    update = {k: v - start[k] for k, v in model.state_dict().items()}
    context = DefenseContext(images=images.numpy(), labels=labels.numpy(), batch_size=2, training=TrainingConfig(),
                             model=path, num_classes=2, in_channels=1, round_index=0)
    return start, update, context


@pytest.mark.parametrize("defense", [ShadowModelDefense(ShadowModelConfig(seed=0)), LatentPerturbation(LatentPerturbationConfig(seed=0))])
def test_data_aware_defenses_run_on_a_network_of_ones_own(defense, own_network, one_torch_thread):
    """Their default layers (Grad-CAM on the last convolution, the latent after the first pooling)
    are found in any network, so a job's own network needs no extra setting."""
    start, update, context = _two_image_round(own_network, 16)
    defended = defense.apply(update, global_state=start, context=context).update
    assert sorted(defended) == sorted(update)
    assert all(torch.isfinite(torch.as_tensor(v, dtype=torch.float32)).all() for v in defended.values())
    assert not torch.equal(torch.as_tensor(defended["classifier.weight"]), update["classifier.weight"])


@pytest.mark.parametrize("name", ["conv_head", "group_norm", "unusual_norms", "monai_classifier", "module_list"])
def test_data_aware_defenses_find_their_layers_in_networks_without_pooling(name, varied_networks, one_torch_thread):
    """Strided convolutions instead of pooling: the latent perturbation splits after the first one."""
    start, update, context = _two_image_round(f"{varied_networks}.{name}", 32)
    for defense in (ShadowModelDefense(ShadowModelConfig(seed=0)), LatentPerturbation(LatentPerturbationConfig(seed=0))):
        outcome = defense.apply(update, global_state=start, context=context)
        assert sorted(outcome.update) == sorted(update)
        assert any(not torch.equal(torch.as_tensor(outcome.update[k]), update[k]) for k in update if k.endswith("weight"))
    split = LatentPerturbation(LatentPerturbationConfig(seed=0)).apply(update, global_state=start, context=context).params["split_layer"]
    expected = {"conv_head": "3", "group_norm": "3", "unusual_norms": "3", "monai_classifier": "net.layer_0", "module_list": "blocks.1.0"}
    assert split == expected[name]


def test_latent_perturbation_names_the_layers_to_choose_from_in_a_network_that_never_downsamples(monkeypatch, tmp_path, request):
    (tmp_path / "flat_networks.py").write_text(
        "from torch import nn\n"
        "def mlp(num_classes=2, in_channels=1):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flat_networks", raising=False)
    request.addfinalizer(lambda: sys.modules.pop("flat_networks", None))
    start, update, context = _two_image_round("flat_networks.mlp", 16)
    with pytest.raises(DataError, match=r"LatentPerturbation: .* give split_layer, one of \['0', '1', '2', '3'\]"):
        LatentPerturbation(LatentPerturbationConfig(seed=0)).apply(update, global_state=start, context=context)
