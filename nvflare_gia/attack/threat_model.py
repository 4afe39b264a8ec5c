"""What the honest-but-curious server knows about a client's local training round.

The threat model follows DESIGN.md and Hatamizadeh et al., "Do Gradient Inversion Attacks Make
Federated Learning Unsafe?", IEEE TMI 2023: the server knows the job configuration (network, loss,
optimizer and its hyperparameters, local epochs, batch size, number of local images, BatchNorm
momentum), the global model it sent and the client's update. It never sees the client's images.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from collections.abc import Collection, Mapping
from typing import Any

from torch import nn

from nvflare_gia.errors import ConfigError
from nvflare_gia.models import resolve_model_name
from nvflare_gia.training import TrainingConfig, num_local_steps

__all__ = ["NUM_STEPS_META_KEY", "TRAINING_META_KEY", "ThreatModel", "bn_momenta"]

logger = logging.getLogger(__name__)

#: Meta key FLARE uses for the number of local optimizer steps (``MetaKey.NUM_STEPS_CURRENT_ROUND``).
NUM_STEPS_META_KEY = "NUM_STEPS_CURRENT_ROUND"
#: Meta key under which the client reports its local-training hyperparameters.
TRAINING_META_KEY = "gia_training"

_TRAINING_KEYS = ("optimizer", "lr", "momentum", "weight_decay", "local_epochs")
_THREAT_KEYS = ("model", "num_classes", "in_channels", "image_size", "batch_size", "num_images", "bn_momentum")
_REQUIRED_KEYS = ("batch_size", "num_images")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and int(value) == value


@dataclasses.dataclass(frozen=True)
class ThreatModel:
    """Everything the attacker knows about one client's round, apart from the tensors.

    Args:
        model: network name for :func:`nvflare_gia.models.build_model` (one of ``MODEL_NAMES``, or the
            dotted path of a network factory).
        num_classes: number of classes of the network (>= 2).
        in_channels: image channels (>= 1).
        image_size: side of the square input images in pixels (>= 4).
        training: the client's optimizer, learning rate, momentum, weight decay and local epochs.
        batch_size: local mini-batch size (>= 1).
        num_images: number of images the client trained on this round (>= 1).
        num_steps: optimizer steps in the round; ``None`` derives it with
            :func:`nvflare_gia.training.num_local_steps`. A value that disagrees with the derived
            one is rejected, because the simulated batch split would not match the client's.
        bn_momentum: BatchNorm momentum in (0, 1]; ``None`` reads it from each BatchNorm module of
            the network (0.1 for PyTorch defaults; a module with ``momentum=None`` uses a
            cumulative average).

    Raises:
        ConfigError: for a value outside the allowed range or of the wrong kind.

    Example:
        >>> threat = ThreatModel(batch_size=4, num_images=8)
        >>> threat.num_steps
        2
    """

    model: str = "small_cnn"
    num_classes: int = 2
    in_channels: int = 1
    image_size: int = 64
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    batch_size: int = 1
    num_images: int = 1
    num_steps: int | None = None
    bn_momentum: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", resolve_model_name(self.model, owner="ThreatModel"))
        if not isinstance(self.training, TrainingConfig):
            raise ConfigError(f"ThreatModel: training must be a TrainingConfig, got {type(self.training).__name__}.")
        for name, minimum in (("num_classes", 2), ("in_channels", 1), ("image_size", 4), ("batch_size", 1), ("num_images", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                raise ConfigError(f"ThreatModel: {name} must be an integer >= {minimum}, got {value!r}.")
            object.__setattr__(self, name, int(value))
        expected = num_local_steps(self.num_images, self.batch_size, self.training.local_epochs)
        if self.num_steps is None:
            object.__setattr__(self, "num_steps", expected)
        elif not _is_int(self.num_steps) or self.num_steps < 1:
            raise ConfigError(f"ThreatModel: num_steps must be an integer >= 1, got {self.num_steps!r}.")
        elif int(self.num_steps) != expected:
            raise ConfigError(
                f"ThreatModel: num_steps must equal local_epochs * ceil(num_images / batch_size) = "
                f"{self.training.local_epochs} * ceil({self.num_images} / {self.batch_size}) = {expected}, "
                f"got {self.num_steps!r}. Check the client's batch_size, num_images and local_epochs."
            )
        else:
            object.__setattr__(self, "num_steps", int(self.num_steps))
        if self.bn_momentum is not None:
            m = self.bn_momentum
            if isinstance(m, bool) or not isinstance(m, numbers.Real) or not (0.0 < m <= 1.0):
                raise ConfigError(f"ThreatModel: bn_momentum must be in (0, 1] or None, got {m!r}.")
            object.__setattr__(self, "bn_momentum", float(m))

    @property
    def epoch_batch_sizes(self) -> tuple[int, ...]:
        """Sizes of one epoch's mini-batches in order (the last may be smaller)."""
        return tuple(min(self.batch_size, self.num_images - s) for s in range(0, self.num_images, self.batch_size))

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """Sizes of the mini-batches of the round in order (the last of each epoch may be smaller)."""
        return self.epoch_batch_sizes * self.training.local_epochs

    def to_dict(self) -> dict:
        """Return the threat model as a flat JSON-serialisable dict (the ``gia_training`` layout)."""
        out = {k: getattr(self, k) for k in _THREAT_KEYS}
        out.update({k: getattr(self.training, k) for k in _TRAINING_KEYS})
        out["num_steps"] = self.num_steps
        return out

    @classmethod
    def from_meta(cls, meta: Mapping, defaults: Mapping | None = None, *, networks: Collection[str] = ()) -> ThreatModel:
        """Build the threat model from an update's meta.

        Values come from ``meta["gia_training"]`` first, then from ``defaults`` (same flat keys,
        e.g. from the widget's configuration), then from the dataclass defaults; ``None`` in either
        mapping counts as unset. ``batch_size`` and ``num_images`` have no safe default and must be
        given by one of the two mappings.
        ``meta["NUM_STEPS_CURRENT_ROUND"]``, when present, is checked against the batch split.

        Args:
            meta: the update's meta (a ``DXO.meta`` or any mapping).
            defaults: fallback values with the keys of ``gia_training``.
            networks: dotted paths of networks to accept as ``model`` besides ``MODEL_NAMES``. The
                meta is the sender's word, so any other path is refused without being imported.

        Returns:
            The validated threat model.

        Raises:
            ConfigError: if a required value is missing, a value is invalid, ``networks`` is not a
                list of strings, ``model`` is a path not in ``networks``, or the step count in the
                meta disagrees with ``local_epochs * ceil(num_images / batch_size)``.
        """
        if not isinstance(meta, Mapping):
            raise ConfigError(f"ThreatModel.from_meta: meta must be a mapping, got {type(meta).__name__}.")
        reported = meta.get(TRAINING_META_KEY) or {}
        if not isinstance(reported, Mapping):
            raise ConfigError(
                f"ThreatModel.from_meta: meta[{TRAINING_META_KEY!r}] must be a mapping, got {type(reported).__name__}."
            )
        merged: dict[str, Any] = {k: v for k, v in (defaults or {}).items() if v is not None}
        merged.update({k: v for k, v in reported.items() if v is not None})
        known = set(_TRAINING_KEYS) | set(_THREAT_KEYS) | {"seed", "num_steps"}
        unknown = sorted(set(merged) - known)
        if unknown:
            logger.debug("ThreatModel.from_meta: ignoring keys %s", unknown)
        missing = [k for k in _REQUIRED_KEYS if merged.get(k) is None]
        if missing:
            raise ConfigError(
                f"ThreatModel.from_meta: {missing} must be given in meta[{TRAINING_META_KEY!r}] or in defaults, "
                f"got meta keys {sorted(reported)} and default keys {sorted(defaults or {})}."
            )
        if "model" in merged:
            merged["model"] = resolve_model_name(merged["model"], owner="ThreatModel.from_meta", trusted=networks)
        training = TrainingConfig(**{k: merged[k] for k in _TRAINING_KEYS if k in merged})
        kwargs = {k: merged[k] for k in _THREAT_KEYS if k in merged}
        num_steps = meta.get(NUM_STEPS_META_KEY, merged.get("num_steps"))
        return cls(training=training, num_steps=num_steps, **kwargs)


def bn_momenta(model: nn.Module, override: float | None = None) -> dict[str, float | None]:
    """BatchNorm momentum of every BatchNorm module of ``model`` that tracks running statistics.

    Args:
        model: the network.
        override: a momentum to use for every layer instead of the modules' own.

    Returns:
        ``{module_name: momentum}``; ``None`` means a cumulative moving average.
    """
    out: dict[str, float | None] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            out[name] = override if override is not None else module.momentum
    return out
