"""The contract every defense follows: ``apply(update, *, global_state, context) -> DefenseOutcome``.

A defense takes a client's update (``{state-dict key: new - old}``, NumPy arrays or torch tensors),
never mutates it, and returns a new update with the same keys, containers, shapes and dtypes, plus
what it did (``noise_norm``, ``params``) and what it cost (``seconds``). Integer entries
(``num_batches_tracked``) are never changed. Each defense owns its random stream: a seed (or OS
entropy when the seed is None), mixed with the FL round and a per-call counter, so rounds draw
different noise while a run with a fixed seed is reproducible.
"""

from __future__ import annotations

import abc
import dataclasses
import threading
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from nvflare_gia.errors import ConfigError, DataError
from nvflare_gia.models import resolve_model_name
from nvflare_gia.training import TrainingConfig

__all__ = ["DefenseOutcome", "DefenseContext", "Defense", "TRAINING_META_KEY"]

#: DXO meta key under which the client script reports its local-training hyperparameters.
TRAINING_META_KEY = "gia_training"

_TRAINING_FIELDS = tuple(field.name for field in dataclasses.fields(TrainingConfig))


@dataclasses.dataclass(frozen=True)
class DefenseOutcome:
    """What a defense returns.

    Attributes:
        update: the defended update: same keys, containers, shapes and dtypes as the input.
        noise_norm: L2 norm of ``defended - input`` over all entries (what was added).
        params: JSON-serialisable description of what was applied (configuration and derived
            values, e.g. the calibrated ``sigma``), recorded by the FLARE filters in the DXO meta.
        seconds: wall-clock time of the call.
    """

    update: dict[str, Any]
    noise_norm: float
    params: dict[str, Any]
    seconds: float


def _check_optional_int(owner: str, name: str, value: Any, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{owner}: {name} must be an int or None, got {value!r}.")
    if value < minimum:
        raise ConfigError(f"{owner}: {name} must be >= {minimum} or None, got {value!r}.")
    return int(value)


@dataclasses.dataclass(frozen=True)
class DefenseContext:
    """What a data-aware defense needs besides the update and the global model.

    The FLARE filters build it from the DXO meta (``gia_training``, written by the client script),
    the site's data (``nvflare_gia.data.load_site_data``) and the round of the task. Noise
    defenses only read ``round_index`` (to vary their noise per round).

    Args:
        round_index: FL round of the update (None when unknown).
        images: the client's local training images, float ``(N, C, H, W)`` in [0, 1].
        labels: integer labels ``(N,)``.
        batch_size: local mini-batch size (>= 1).
        training: the client's optimizer and schedule (``TrainingConfig``, its ``seed`` drives the
            batch shuffling of ``train_local``).
        model: network name for ``nvflare_gia.models.build_model``.
        num_classes: number of classes of the network (>= 2).
        in_channels: image channels (>= 1).
        val_images: public images ``(M, C, H, W)`` in [0, 1] that an attacker may hold as well (the
            data spec's validation split); a self-audit with a ``val_mean`` or ``val_retrieval``
            prior draws its prior from them, as the server's widget does.

    Raises:
        TypeError: for a field of the wrong type.
        DataError: if images and labels disagree, or images or val_images are not 4-D.
        ConfigError: for an unknown model name or a value out of range.

    Example:
        >>> DefenseContext(round_index=3).round_index
        3
    """

    round_index: int | None = None
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    batch_size: int | None = None
    training: TrainingConfig | None = None
    model: str | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    val_images: np.ndarray | None = None

    def __post_init__(self) -> None:
        owner = "DefenseContext"
        # Store Python ints: NumPy integers pass the check but ThreatModel (the self-audit) rejects them.
        for name, minimum in (("round_index", 0), ("batch_size", 1), ("num_classes", 2), ("in_channels", 1)):
            object.__setattr__(self, name, _check_optional_int(owner, name, getattr(self, name), minimum))
        if self.training is not None and not isinstance(self.training, TrainingConfig):
            raise TypeError(f"{owner}: training must be a TrainingConfig or None, got {type(self.training).__name__}.")
        if self.model is not None:
            object.__setattr__(self, "model", resolve_model_name(self.model, owner=owner))
        if self.images is not None:
            shape = tuple(np.shape(self.images))
            if len(shape) != 4 or 0 in shape:
                raise DataError(f"{owner}: images must have shape (N, C, H, W) with N >= 1, got {shape}.")
            if self.in_channels is not None and shape[1] != self.in_channels:
                raise DataError(f"{owner}: images have {shape[1]} channel(s); in_channels is {self.in_channels}.")
        if self.labels is not None:
            n_labels = len(np.reshape(np.asarray(self.labels), -1))
            n_images = None if self.images is None else int(np.shape(self.images)[0])
            if n_images is not None and n_labels != n_images:
                raise DataError(f"{owner}: labels must have one entry per image ({n_images}), got {n_labels}.")
        if self.val_images is not None:
            shape = tuple(np.shape(self.val_images))
            if len(shape) != 4 or 0 in shape or (self.images is not None and shape[1:] != tuple(np.shape(self.images))[1:]):
                expected = "(M, C, H, W)" if self.images is None else f"(M, {', '.join(map(str, np.shape(self.images)[1:]))})"
                raise DataError(f"{owner}: val_images must have shape {expected} with M >= 1, got {shape}.")

    @classmethod
    def from_training_meta(
        cls,
        meta: Mapping,
        *,
        images: Any = None,
        labels: Any = None,
        round_index: int | None = None,
        val_images: Any = None,
    ) -> DefenseContext:
        """Build the context from an update's meta (``meta["gia_training"]``) and the site's data.

        ``gia_training`` holds the ``TrainingConfig`` fields, ``batch_size``, ``num_images``,
        ``model``, ``num_classes``, ``in_channels`` and ``image_size`` (see
        ``nvflare_gia.flare.client_train``). ``num_images`` and ``image_size``, when present, must
        agree with ``images``: otherwise the data loaded here is not what the client trained on.

        Args:
            meta: the DXO meta (any mapping).
            images: the site's training images ``(N, C, H, W)``.
            labels: the site's training labels ``(N,)``.
            round_index: FL round of the update.
            val_images: public validation images (see the class).

        Returns:
            The validated context.

        Raises:
            DataError: if ``gia_training`` is missing or disagrees with the data.
            ConfigError: if a hyperparameter is invalid.
        """
        if not isinstance(meta, Mapping):
            raise TypeError(f"DefenseContext.from_training_meta: meta must be a mapping, got {type(meta).__name__}.")
        reported = meta.get(TRAINING_META_KEY)
        if not isinstance(reported, Mapping):
            raise DataError(
                f"DefenseContext.from_training_meta: meta[{TRAINING_META_KEY!r}] must be a mapping of the client's "
                f"training hyperparameters, got {type(reported).__name__}; the client script must report them "
                "(nvflare_gia.flare.client_train does)."
            )
        missing = [k for k in ("batch_size", "model", "num_classes") if reported.get(k) is None]
        if missing:
            raise DataError(
                f"DefenseContext.from_training_meta: meta[{TRAINING_META_KEY!r}] lacks {missing}, got keys {sorted(reported)}."
            )
        training = TrainingConfig(**{k: reported[k] for k in _TRAINING_FIELDS if reported.get(k) is not None})
        if images is not None:
            shape = tuple(np.shape(images))
            for key, actual in (("num_images", shape[0] if shape else None), ("image_size", shape[-1] if shape else None)):
                expected = reported.get(key)
                if expected is not None and actual is not None and int(expected) != int(actual):
                    raise DataError(
                        f"DefenseContext.from_training_meta: the client trained with {key}={expected} but the site data "
                        f"loaded for the defense has {key}={actual}; the defense must see the client's own data."
                    )
        in_channels = reported.get("in_channels")
        if in_channels is None and images is not None:
            in_channels = int(np.shape(images)[1])
        return cls(
            round_index=round_index,
            images=images,
            labels=labels,
            batch_size=int(reported["batch_size"]),
            training=training,
            model=str(reported["model"]),
            num_classes=int(reported["num_classes"]),
            in_channels=None if in_channels is None else int(in_channels),
            val_images=val_images,
        )

    def require_data(self, owner: str) -> None:
        """Raise ``DataError`` naming every field a data-aware defense needs that is missing."""
        missing = [
            name
            for name in ("images", "labels", "batch_size", "training", "model", "num_classes", "in_channels")
            if getattr(self, name) is None
        ]
        if missing:
            raise DataError(
                f"{owner}: context must give the client's data and training configuration; missing {missing}. "
                "Build it with DefenseContext.from_training_meta(meta, images=..., labels=...)."
            )


class Defense(abc.ABC):
    """Base class of the core defenses: config validation lives in each ``*Config``; this class
    holds the seeded random stream and states what ``apply`` needs.

    Attributes:
        requires_global_state: whether ``apply`` needs ``global_state``.
        requires_data: whether ``apply`` needs a ``DefenseContext`` with the client's data.
    """

    requires_global_state: ClassVar[bool] = False
    requires_data: ClassVar[bool] = False

    def __init__(self, seed: int | None) -> None:
        self._seed = seed
        self._calls = 0
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The defense's public name (its class name), recorded in the ``gia_defense`` meta entry."""
        return type(self).__name__

    def _next_seed(self, round_index: int | None) -> int:
        """A 63-bit seed for one call: from (seed, round, call counter), or fresh OS entropy for seed None."""
        with self._lock:
            self._calls += 1
            calls = self._calls
        if self._seed is None:
            sequence = np.random.SeedSequence()
        else:
            sequence = np.random.SeedSequence([int(self._seed), 0 if round_index is None else int(round_index) + 1, calls])
        low, high = (int(v) for v in sequence.generate_state(2, np.uint32))
        return ((high << 32) | low) & ((1 << 63) - 1)

    @staticmethod
    def _torch_generator(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    @abc.abstractmethod
    def apply(self, update: Mapping[str, Any], *, global_state: Mapping[str, Any] | None = None, context: DefenseContext | None = None) -> DefenseOutcome:
        """Return the defended update (see the module docstring for the contract)."""
