import json

import numpy as np
import pytest
import torch

from nvflare_gia.errors import ConfigError
from nvflare_gia.models import SmallCNN
from nvflare_gia.training import TrainingConfig, evaluate, macro_f1, num_local_steps, train_local


def test_train_local_takes_one_step_per_batch_and_changes_weights():
    torch.manual_seed(0)
    model = SmallCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = train_local(model, torch.rand(10, 1, 16, 16), torch.randint(0, 2, (10,)), 4, TrainingConfig(local_epochs=2))
    assert steps == num_local_steps(10, 4, 2) == 6
    after = model.state_dict()
    assert int(after["features.1.num_batches_tracked"]) == 6
    assert not torch.equal(before["features.0.weight"], after["features.0.weight"])
    assert not torch.equal(before["features.1.running_mean"], after["features.1.running_mean"])


def test_train_local_single_sgd_step_equals_minus_lr_times_gradient():
    torch.manual_seed(0)
    model = SmallCNN()
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 1, 0])
    reference = SmallCNN()
    reference.load_state_dict(model.state_dict())
    torch.nn.functional.cross_entropy(reference(x), y).backward()
    expected = reference.classifier.weight.detach() - 0.05 * reference.classifier.weight.grad
    train_local(model, x, y, 4, TrainingConfig(lr=0.05))
    torch.testing.assert_close(model.classifier.weight.detach(), expected)


def test_macro_f1_matches_hand_computation():
    truth = np.array([0, 0, 1, 1, 1])
    pred = np.array([0, 1, 1, 1, 0])
    # class 0: tp1 fp1 fn1 -> 0.5 ; class 1: tp2 fp1 fn1 -> 4/6
    assert macro_f1(truth, pred) == pytest.approx((0.5 + 4 / 6) / 2)


def test_evaluate_restores_training_mode_and_scores_perfect_model():
    model = SmallCNN()
    model.train()
    x = torch.rand(6, 1, 16, 16)
    with torch.no_grad():
        model.eval()
        y = model(x).argmax(1).numpy()
        model.train()
    result = evaluate(model, x, y)
    assert result == {"accuracy": 1.0, "f1": 1.0}
    assert model.training


@pytest.mark.parametrize(
    "kwargs, match",
    [({"optimizer": "rmsprop"}, "optimizer must be one of"), ({"lr": 0}, "lr must be"), ({"momentum": 1.0}, "momentum"), ({"local_epochs": 0}, "local_epochs")],
)
def test_training_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainingConfig(**kwargs)


def test_training_config_stores_an_integral_float_local_epochs_as_int():
    config = TrainingConfig(local_epochs=2.0)
    assert config.local_epochs == 2 and isinstance(config.local_epochs, int)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weight_decay": float("nan")}, "weight_decay"),
        ({"weight_decay": float("inf")}, "weight_decay"),
        ({"momentum": "0.9"}, "momentum"),
        ({"weight_decay": "0"}, "weight_decay"),
        ({"lr": True}, "lr"),
        ({"local_epochs": float("inf")}, "local_epochs"),
        ({"local_epochs": float("nan")}, "local_epochs"),
    ],
)
def test_training_config_names_the_argument_for_non_finite_or_non_numeric_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainingConfig(**kwargs)


def test_training_config_accepts_numpy_scalars():
    config = TrainingConfig(lr=np.float32(0.05), momentum=np.float32(0.5), weight_decay=np.float32(0.0), local_epochs=np.int64(2))
    assert config.local_epochs == 2
    assert all(type(getattr(config, name)) is float for name in ("lr", "momentum", "weight_decay"))
    json.dumps(config.to_dict())  # the update's meta: NumPy scalars would not serialise
