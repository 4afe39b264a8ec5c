import numpy as np
import pytest
import torch
from torch import nn

from nvflare_gia.errors import ConfigError, DataError
from nvflare_gia.models import MODEL_NAMES, SmallCNN, build_model, build_model_from_state


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
