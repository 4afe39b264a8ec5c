"""FLARE Client API training script run on every site by :class:`TrainingExecutor`.

Each round it loads the received global model, evaluates it on the site's validation share
(accuracy and macro F1, streamed to the server's TensorBoard), trains locally with the job's
hyperparameters, and sends the whole ``state_dict`` (BatchNorm buffers included) back; the executor
turns it into a ``WEIGHT_DIFF``. The DXO meta carries ``NUM_STEPS_CURRENT_ROUND`` and the
hyperparameters under ``gia_training``, which is what an honest-but-curious server knows anyway
from the job config.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import torch

from nvflare_gia.data import DataSpec, load_site_data
from nvflare_gia.errors import ConfigError
from nvflare_gia.models import MODEL_NAMES, build_model, resolve_model_name
from nvflare_gia.training import TrainingConfig, evaluate, train_local, training_meta

__all__ = ["GIA_TRAINING_META_KEY", "DEFAULT_DATA_SPEC_FILE", "parse_args", "training_config_from_args", "resolve_data_spec", "main"]

logger = logging.getLogger(__name__)

GIA_TRAINING_META_KEY = "gia_training"
DEFAULT_DATA_SPEC_FILE = "gia_data.json"


class _ArgumentParser(argparse.ArgumentParser):
    """Raises ``ConfigError`` rather than exiting: ``sys.exit`` in the in-process trainer thread only
    ends the thread, and FLARE then fails the task without saying why."""

    def error(self, message: str) -> NoReturn:
        options = [action.option_strings[-1] for action in self._actions if action.option_strings and action.dest != "help"]
        raise ConfigError(f"client_train: train_args {message}; the arguments are {options}.")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the training arguments (``task_script_args`` of the job); defaults come from ``TrainingConfig``.

    Raises:
        ConfigError: for an unknown argument, a value of the wrong type, or a ``--model`` that is
            not a network name (:func:`nvflare_gia.models.resolve_model_name`).
    """
    defaults = TrainingConfig()
    parser = _ArgumentParser(description="nvflare_gia client training (FLARE Client API)")
    parser.add_argument("--data_spec", default=DEFAULT_DATA_SPEC_FILE, help="DataSpec JSON file (relative to the app's config folder) or JSON text")
    parser.add_argument("--model", default="small_cnn", help=f"one of {list(MODEL_NAMES)} or the dotted path of a network factory")
    parser.add_argument("--optimizer", default=defaults.optimizer)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--momentum", type=float, default=defaults.momentum)
    parser.add_argument("--weight_decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--local_epochs", type=int, default=defaults.local_epochs)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    args.model = resolve_model_name(args.model, owner="client_train", arg="train_args --model")
    return args


def training_config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """The ``TrainingConfig`` of parsed training arguments: one argument per field, validated by it.

    Raises:
        ConfigError: for a value outside a field's allowed range.
    """
    return TrainingConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(TrainingConfig)})


def resolve_data_spec(value: str, app_config_dir: str | os.PathLike) -> DataSpec:
    """Read the job's data spec: JSON text, an absolute path, or a file in the app's config folder.

    Raises:
        ConfigError: if the file cannot be found.
    """
    text = value.strip()
    if text.startswith("{"):
        return DataSpec.from_json(text)
    candidate = Path(text) if os.path.isabs(text) else Path(app_config_dir) / text
    if not candidate.is_file():
        raise ConfigError(f"client_train: data_spec must be JSON text or an existing file, got {value!r} (looked for {candidate}).")
    return DataSpec.from_json(str(candidate))


def _app_config_dir(site_name: str, job_id: str) -> Path:
    # In-process Client API scripts run with the site's workspace root as cwd (simulator and POC);
    # FLARE deploys the app to <root>/<job_id>/app_<site>/ (see nvflare.apis.workspace.Workspace).
    return Path.cwd() / job_id / f"app_{site_name}" / "config"


def main(argv: Sequence[str] | None = None) -> None:
    """Run the FLARE Client API training loop until the job ends."""
    import nvflare.client as flare
    from nvflare.apis.fl_constant import FLMetaKey
    from nvflare.client.tracking import SummaryWriter

    args = parse_args(argv)
    config = training_config_from_args(args)
    flare.init()
    site_name = flare.get_site_name()
    spec = resolve_data_spec(args.data_spec, _app_config_dir(site_name, flare.get_job_id()))
    data = load_site_data(spec, site_name)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(args.seed)
    model = build_model(args.model, num_classes=data.num_classes, in_channels=int(data.train_images.shape[1])).to(device)
    writer = SummaryWriter()
    hyperparameters = training_meta(config, args.model, data.train_images, data.num_classes, data.batch_size)
    logger.info("%s: %d training images, batch %d, %s", site_name, len(data.train_labels), data.batch_size, config)

    while flare.is_running():
        received = flare.receive()
        if received is None:
            break
        round_index = int(received.current_round or 0)
        state = {k: torch.as_tensor(v) for k, v in received.params.items()}
        model.load_state_dict(state)
        metrics = evaluate(model, data.val_images, data.val_labels)
        for name, value in metrics.items():
            writer.add_scalar(f"{site_name}/{name}", value, round_index)
        logger.info("%s round %d: global model accuracy %.4f f1 %.4f", site_name, round_index, metrics["accuracy"], metrics["f1"])
        if flare.is_evaluate():
            flare.send(flare.FLModel(metrics=metrics))
            continue
        steps = train_local(model, data.train_images, data.train_labels, data.batch_size, config, round_index=round_index)
        trained = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        flare.send(
            flare.FLModel(
                params=trained,
                metrics=metrics,
                meta={FLMetaKey.NUM_STEPS_CURRENT_ROUND: steps, GIA_TRAINING_META_KEY: hyperparameters},
            )
        )


if __name__ == "__main__":
    main()
