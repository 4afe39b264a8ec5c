"""Local training and evaluation shared by the FLARE client script, the attack and the benchmarks.

The attack simulates exactly this loop (same loss, optimizer, batching), so there is one
definition of what a client does in a round.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers

import numpy as np
import torch
from torch import nn

from nvflare_gia.errors import ConfigError

__all__ = [
    "OptimizerName", "TrainingConfig", "build_optimizer", "epoch_orders", "train_local", "training_meta", "evaluate", "macro_f1",
    "num_local_steps",
]


class OptimizerName(str, enum.Enum):
    """Optimizers a client may use (and the attack can simulate)."""

    SGD = "sgd"
    ADAM = "adam"


def _is_real(value) -> bool:
    """Whether ``value`` is a finite real number (NumPy scalars included, ``bool`` excluded)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Hyperparameters of one client's local training round.

    Args:
        optimizer: ``sgd`` or ``adam``.
        lr: learning rate (> 0).
        momentum: SGD momentum in [0, 1).
        weight_decay: L2 weight decay (>= 0).
        local_epochs: passes over the local data per round (>= 1).
        seed: seed of the batch shuffling.

    Raises:
        ConfigError: for a value outside the allowed range.
    """

    optimizer: str = OptimizerName.SGD.value
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    local_epochs: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        allowed = [o.value for o in OptimizerName]
        if self.optimizer not in allowed:
            raise ConfigError(f"TrainingConfig: optimizer must be one of {allowed}, got {self.optimizer!r}.")
        if not (_is_real(self.lr) and self.lr > 0):
            raise ConfigError(f"TrainingConfig: lr must be a finite number > 0, got {self.lr!r}.")
        if not (_is_real(self.momentum) and 0.0 <= self.momentum < 1.0):
            raise ConfigError(f"TrainingConfig: momentum must be in [0, 1), got {self.momentum!r}.")
        if not (_is_real(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"TrainingConfig: weight_decay must be a finite number >= 0, got {self.weight_decay!r}.")
        if not (_is_real(self.local_epochs) and int(self.local_epochs) == self.local_epochs and self.local_epochs >= 1):
            raise ConfigError(f"TrainingConfig: local_epochs must be an integer >= 1, got {self.local_epochs!r}.")
        for name in ("lr", "momentum", "weight_decay"):  # plain floats: NumPy scalars are not JSON-serialisable
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "local_epochs", int(self.local_epochs))

    def to_dict(self) -> dict:
        """Return the hyperparameters as a JSON-serialisable dict (sent in the update's meta)."""
        return dataclasses.asdict(self)


def build_optimizer(params, config: TrainingConfig) -> torch.optim.Optimizer:
    """Build the optimizer named by ``config`` over ``params``."""
    if config.optimizer == OptimizerName.ADAM.value:
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def num_local_steps(num_images: int, batch_size: int, local_epochs: int) -> int:
    """Number of optimizer steps in one round: ``local_epochs * ceil(num_images / batch_size)``."""
    return int(local_epochs) * math.ceil(int(num_images) / int(batch_size))


def epoch_orders(num_images: int, config: TrainingConfig, round_index: int = 0) -> list[torch.Tensor]:
    """The order in which :func:`train_local` visits the images, one permutation per local epoch.

    Seeded by ``config.seed`` and ``round_index``, so an audit that holds the client's data and
    its reported training configuration can put the true images in the client's batches (to score
    them, never to attack).

    Args:
        num_images: number of training images (>= 1).
        config: the client's training configuration (``seed``, ``local_epochs``).
        round_index: FL round.

    Returns:
        ``config.local_epochs`` permutations of ``range(num_images)`` (int64, CPU).
    """
    generator = torch.Generator().manual_seed(int(config.seed) * 100_003 + int(round_index))
    return [torch.randperm(num_images, generator=generator) for _ in range(int(config.local_epochs))]


def train_local(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    batch_size: int,
    config: TrainingConfig,
    round_index: int = 0,
) -> int:
    """Train ``model`` in place for one round: shuffled mini-batches (the last may be smaller),
    cross-entropy loss, BatchNorm in train mode.

    Args:
        model: the network, on the device where training runs.
        images: float images ``(N, C, H, W)`` in [0, 1].
        labels: integer labels ``(N,)``.
        batch_size: mini-batch size (>= 1).
        config: optimizer and schedule.
        round_index: FL round, mixed into the shuffling seed so rounds see different orders.

    Returns:
        The number of optimizer steps taken.

    Raises:
        ConfigError: if ``batch_size`` < 1 or there are no images.
    """
    if batch_size < 1:
        raise ConfigError(f"train_local: batch_size must be >= 1, got {batch_size!r}.")
    device = next(model.parameters()).device
    x = torch.as_tensor(images, dtype=torch.float32, device=device)
    y = torch.as_tensor(labels, dtype=torch.long, device=device)
    if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
        raise ConfigError(f"train_local: images and labels must be non-empty and equal in length, got {x.shape[0]} and {y.shape[0]}.")
    optimizer = build_optimizer(model.parameters(), config)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    steps = 0
    for order in epoch_orders(x.shape[0], config, round_index):
        order = order.to(device)
        for start in range(0, x.shape[0], batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            steps += 1
    return steps


def training_meta(config: TrainingConfig, model: str, images: np.ndarray | torch.Tensor, num_classes: int, batch_size: int) -> dict:
    """The hyperparameters a client reports with its update under ``meta["gia_training"]``: what
    an honest-but-curious server knows from the job anyway, and what the attack and the
    data-aware defenses replay the round from.

    Args:
        config: the client's optimizer and schedule.
        model: the network's name (see :func:`nvflare_gia.models.build_model`).
        images: the client's training images ``(N, C, H, W)``.
        num_classes: number of classes.
        batch_size: the client's mini-batch size.

    Returns:
        The ``TrainingConfig`` fields plus ``batch_size``, ``num_images``, ``model``,
        ``num_classes``, ``in_channels``, ``image_size`` and ``loss``.
    """
    shape = tuple(images.shape)
    return {
        **config.to_dict(),
        "batch_size": int(batch_size),
        "num_images": int(shape[0]),
        "model": str(model),
        "num_classes": int(num_classes),
        "in_channels": int(shape[1]),
        "image_size": int(shape[-1]),
        "loss": "cross_entropy",
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, batch_size: int = 128
) -> dict[str, float]:
    """Accuracy and macro F1 of ``model`` (eval mode) on labelled images.

    Returns:
        ``{"accuracy": ..., "f1": ...}``, both in [0, 1]; higher is better.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = torch.as_tensor(images, dtype=torch.float32)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    predictions = np.concatenate(
        [model(x[i : i + batch_size].to(device)).argmax(dim=1).cpu().numpy() for i in range(0, len(x), batch_size)]
    ) if len(x) else np.zeros(0, dtype=np.int64)
    model.train(was_training)
    return {"accuracy": float(np.mean(predictions == y)) if len(y) else float("nan"), "f1": macro_f1(y, predictions)}


def macro_f1(truth: np.ndarray, predictions: np.ndarray) -> float:
    """Macro-averaged F1 over the classes present in ``truth`` or ``predictions``."""
    scores = []
    for cls in np.union1d(truth, predictions):
        tp = np.sum((predictions == cls) & (truth == cls))
        fp = np.sum((predictions == cls) & (truth != cls))
        fn = np.sum((predictions != cls) & (truth == cls))
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores)) if scores else float("nan")
