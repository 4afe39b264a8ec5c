"""The client executor of nvflare_gia jobs: FLARE's Client API executor running our training script."""

from __future__ import annotations

from pathlib import Path

from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor

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
    """

    def __init__(self, train_args: str = "") -> None:
        super().__init__(
            execution_mode="in_process",
            task_script_path=TRAINING_SCRIPT,
            task_script_args=train_args,
            params_exchange_format="pytorch",
            params_transfer_type="DIFF",
        )
        self.train_args = train_args
