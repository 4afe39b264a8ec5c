"""The client executor of nvflare_gia jobs: FLARE's Client API executor running our training script."""

from __future__ import annotations

from pathlib import Path

from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor
from nvflare.fuel.utils.secret_utils import split_command_preserving_secret_refs

from nvflare_gia.flare.client_train import parse_args, training_config_from_args

__all__ = ["TrainingExecutor", "TRAINING_SCRIPT"]

TRAINING_SCRIPT = str(Path(__file__).resolve().with_name("client_train.py"))


class TrainingExecutor(ClientAPIExecutor):
    """Run :mod:`nvflare_gia.flare.client_train` in process with FLARE's Client API.

    The script ships with the installed package, so job folders need no ``custom/`` code (production
    sites may forbid custom code); it sends the whole ``state_dict`` and the Client API turns it into
    a ``WEIGHT_DIFF`` against the received global model.

    Args:
        train_args: the training script's arguments, e.g. ``"--lr 0.01 --local_epochs 1"``
            (see ``nvflare_gia.flare.client_train.parse_args``).

    Raises:
        TypeError: if ``train_args`` is not a string.
        ConfigError: for an unknown training argument or a bad value (at construction, i.e. at deployment).
    """

    def __init__(self, train_args: str = "") -> None:
        if not isinstance(train_args, str):
            raise TypeError(f"TrainingExecutor: train_args must be a string of training arguments, got {train_args!r}.")
        if "${secret:" not in train_args:  # secret values are only known on the site, when the script starts
            training_config_from_args(parse_args(split_command_preserving_secret_refs(train_args, posix=False)))
        super().__init__(
            execution_mode="in_process",
            task_script_path=TRAINING_SCRIPT,
            task_script_args=train_args,
            params_exchange_format="pytorch",
            params_transfer_type="DIFF",
        )
        self.train_args = train_args
