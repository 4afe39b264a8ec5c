"""TrainingExecutor checks its training arguments at construction (deploy time), not in the trainer thread."""

from __future__ import annotations

import pytest

from nvflare_gia.errors import ConfigError
from nvflare_gia.flare.executor import TrainingExecutor


@pytest.mark.parametrize(
    ("train_args", "error", "pattern"),
    [
        ("--local-epochs 2", ConfigError, r"train_args .*unrecognized arguments: --local-epochs 2"),
        ("--lr fast", ConfigError, r"train_args .*--lr: invalid float value: 'fast'"),
        ("--model resnet", ConfigError, r"client_train: train_args --model must be one of \[.*'resnet18'\] or the dotted path .*Did you mean 'resnet18'"),
        ("--model my_networks.Net", ConfigError, r"train_args --model 'my_networks.Net': module 'my_networks' does not import .*app/custom"),
        ("--lr -0.1", ConfigError, r"lr must be a finite number > 0, got -0.1"),
        ("--optimizer rmsprop", ConfigError, r"optimizer must be one of .*, got 'rmsprop'"),
        (["--lr", "0.01"], TypeError, r"train_args must be a string of training arguments, got \['--lr', '0.01'\]"),
    ],
)
def test_training_executor_rejects_bad_train_args_at_construction(train_args, error, pattern):
    with pytest.raises(error, match=pattern):
        TrainingExecutor(train_args=train_args)


@pytest.mark.parametrize("train_args", ["", "--lr 0.01 --local_epochs 1", "  --optimizer adam  --seed 3 ", "--model nvflare_gia.models.SmallCNN"])
def test_training_executor_accepts_valid_train_args_and_stores_them_unchanged(train_args):
    assert TrainingExecutor(train_args=train_args).train_args == train_args
