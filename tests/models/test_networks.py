import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nvflare_gia.attack import ThreatModel
from nvflare_gia.defenses.base import DefenseContext
from nvflare_gia.errors import ConfigError, DataError
from nvflare_gia.models import MODEL_NAMES, SmallCNN, build_model, build_model_from_state, resolve_model_name


def test_small_cnn_has_the_exact_benchmark_layout():
    model = SmallCNN(num_classes=3)
    layers = [m for m in model.modules() if not isinstance(m, (nn.Sequential, SmallCNN))]
    kinds = [type(m).__name__ for m in layers]
    assert kinds == [
        "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
        "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
        "Conv2d", "BatchNorm2d", "ReLU",
        "AdaptiveAvgPool2d", "Flatten", "Linear",
    ]
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding, c.bias) for c in convs] == [
        (1, 16, (3, 3), (1, 1), None), (16, 32, (3, 3), (1, 1), None), (32, 64, (3, 3), (1, 1), None)
    ]
    assert (layers[-1].in_features, layers[-1].out_features) == (64, 3)
    assert sum(p.numel() for p in model.parameters()) == 144 + 32 + 4608 + 64 + 18432 + 128 + 64 * 3 + 3


def test_small_cnn_state_dict_carries_batchnorm_buffers():
    keys = SmallCNN().state_dict().keys()
    for layer in ("features.1", "features.5", "features.9"):
        assert {f"{layer}.running_mean", f"{layer}.running_var", f"{layer}.num_batches_tracked"} <= set(keys)


@pytest.mark.parametrize("size", [16, 28, 64])
def test_small_cnn_accepts_any_square_size(size):
    assert SmallCNN()(torch.rand(2, 1, size, size)).shape == (2, 2)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_build_model_gives_one_channel_networks_with_batchnorm(name):
    model = build_model(name, num_classes=2)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 2)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_build_model_rejects_unknown_name_with_suggestion():
    with pytest.raises(ConfigError, match=r"name must be one of .*'densenet121'.*Did you mean 'densenet121'"):
        build_model("densenet12")


def test_small_cnn_rejects_single_class():
    with pytest.raises(ConfigError, match="num_classes must be >= 2, got 1"):
        SmallCNN(num_classes=1)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_init_seed_makes_initial_weights_reproducible_without_touching_global_rng(name):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = build_model(name, init_seed=7).state_dict()
    assert torch.equal(torch.rand(1), expected_next)
    second = build_model(name, init_seed=7).state_dict()
    other = build_model(name, init_seed=8).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_build_model_from_state_equals_a_built_and_loaded_network(name):
    reference = build_model(name, num_classes=3, init_seed=3)
    state = {k: v.numpy().copy() for k, v in reference.state_dict().items()}  # NumPy values, as FLARE sends them
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    model = build_model_from_state(name, state, num_classes=3)
    assert torch.equal(torch.rand(1), expected_next)  # no random initialisation drew from the global RNG
    assert model.training
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in reference.state_dict().items())
    x = torch.rand(2, 1, 32, 32)
    reference.eval(), model.eval()
    assert torch.equal(model(x), reference(x))
    loaded[next(iter(loaded))].add_(1.0)  # the network holds a copy, not the caller's arrays
    assert all(np.array_equal(state[k], v.numpy()) for k, v in reference.state_dict().items())


def test_build_model_from_state_names_missing_unexpected_and_misshaped_entries():
    state = dict(SmallCNN(init_seed=0).state_dict())
    with pytest.raises(DataError, match=r"caller: the global model does not fit network 'small_cnn': missing \['classifier.bias'\], unexpected \['extra'\]"):
        build_model_from_state("small_cnn", {**{k: v for k, v in state.items() if k != "classifier.bias"}, "extra": torch.zeros(1)}, owner="caller")
    with pytest.raises(DataError, match=r"global_state\['classifier.weight'\] has shape \(3, 64\); network 'small_cnn' expects \(2, 64\)"):
        build_model_from_state("small_cnn", {**state, "classifier.weight": torch.zeros(3, 64)})
    with pytest.raises(ConfigError, match="name must be one of"):
        build_model_from_state("resnet", state)


def test_build_model_builds_a_network_of_ones_own_from_its_dotted_path(own_network):
    name = own_network
    model = build_model(name, num_classes=3, in_channels=1, init_seed=7)
    assert type(model).__name__ == "SpatialHeadCNN" and model.training and model.classifier.in_features == 64 * 16
    again = build_model(name, num_classes=3, in_channels=1, init_seed=7).state_dict()
    assert all(torch.equal(value, again[key]) for key, value in model.state_dict().items())
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    assert torch.equal(build_model_from_state(name, state, num_classes=3).classifier.weight, model.classifier.weight)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 3)
    assert resolve_model_name(name, owner="X") == name  # a path keeps its case; built-in names are lower-cased
    assert resolve_model_name("ResNet18", owner="X") == "resnet18"


def _write_module(directory: Path, source: str) -> None:
    (directory / "my_networks.py").write_text(source)


@pytest.mark.parametrize(
    "name, source, match",
    [
        ("my_networks.missing", "", r"build_model: name 'my_networks.missing': module 'my_networks' has no callable 'missing'"),
        ("my_networks.WIDTH", "WIDTH = 3\n", r"has no callable 'WIDTH'"),
        ("no_such_package.networks.Net", "", r"module 'no_such_package.networks' does not import .*app/custom folder"),
        ("my_networks.Net", "raise RuntimeError('no GPU')\n", r"module 'my_networks' does not import \(no GPU\)"),
        ("..my_networks.Net", "", r"module '..my_networks' does not import"),
        ("my_networks.net", "def net(width):\n    return width\n", r"'my_networks.net' must take the keyword arguments num_classes and in_channels"),
        ("my_networks.net", "def net(num_classes, in_channels):\n    return 3\n", r"'my_networks.net' returned a int, not a torch.nn.Module"),
        ("my_networks", "", r"name must be one of \['small_cnn', 'densenet121', 'resnet18'\] or the dotted path"),
    ],
)
def test_build_model_names_what_is_wrong_with_a_path(tmp_path, monkeypatch, request, name, source, match):
    _write_module(tmp_path, source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_networks", raising=False)
    request.addfinalizer(lambda: sys.modules.pop("my_networks", None))  # later tests expect no such module
    with pytest.raises(ConfigError, match=match):
        build_model(name)


def test_threat_model_and_defense_context_check_the_network_name(own_network):
    assert ThreatModel(model=own_network).model == DefenseContext(model=own_network).model == own_network
    with pytest.raises(ConfigError, match=r"ThreatModel: model must be one of .*Did you mean 'small_cnn'"):
        ThreatModel(model="smallcnn")
    with pytest.raises(ConfigError, match=r"DefenseContext: model 'spatial_head_net.Missing': module 'spatial_head_net' has no callable"):
        DefenseContext(model="spatial_head_net.Missing")
