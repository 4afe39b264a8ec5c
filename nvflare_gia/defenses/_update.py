"""Update-space helpers shared by every defense (and by the FLARE filters, which fail closed on them).

An *update* maps state-dict keys to NumPy arrays or torch tensors: ``new_state - global_state`` for
every entry, BatchNorm buffers included (FLARE ``WEIGHT_DIFF``). Floating-point entries are what a
defense may change; integer entries and ``num_batches_tracked`` counters (float64 after FedAvg)
are always passed through unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from nvflare_gia.errors import DataError

__all__ = [
    "BN_RUNNING_STAT_SUFFIXES",
    "UpdateValue",
    "COUNTER_SUFFIX",
    "is_floating",
    "is_perturbable",
    "is_bn_running_stat",
    "to_numpy",
    "to_tensor",
    "restore_like",
    "copy_value",
    "validate_update",
    "squared_norm",
    "squared_norm_float64",
]

UpdateValue = np.ndarray | torch.Tensor

#: Key suffixes of BatchNorm running statistics (float buffers that travel in a ``state_dict``).
BN_RUNNING_STAT_SUFFIXES = ("running_mean", "running_var")

#: Key suffix of BatchNorm step counters: never perturbed, even when FedAvg made them float64.
COUNTER_SUFFIX = "num_batches_tracked"

_MAX_LISTED = 5


def is_floating(value: UpdateValue) -> bool:
    """Whether ``value`` holds floating-point numbers (the entries a defense may perturb)."""
    if isinstance(value, torch.Tensor):
        return value.is_floating_point()
    return np.issubdtype(np.asarray(value).dtype, np.floating)


def is_perturbable(key: str, value: UpdateValue) -> bool:
    """Whether a defense may change entry ``key``: floating point and not a ``num_batches_tracked`` counter.

    After FedAvg the counters are float64 in the global model, so a client's ``WEIGHT_DIFF`` can
    hold them as floats; they are step counts, not weights, and stay untouched.
    """
    return is_floating(value) and not str(key).endswith(COUNTER_SUFFIX)


def is_bn_running_stat(key: str) -> bool:
    """Whether ``key`` names a BatchNorm running mean or running variance buffer."""
    return str(key).endswith(BN_RUNNING_STAT_SUFFIXES)


def to_numpy(value: UpdateValue) -> np.ndarray:
    """A NumPy view (or, for tensors on a device or in bfloat16, a copy) of ``value``; never mutate it."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return tensor.cpu().numpy()
    return np.asarray(value)


def to_tensor(value: UpdateValue, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A detached CPU tensor holding a copy of ``value`` (optionally cast to ``dtype``)."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu")
        tensor = tensor.clone() if dtype is None or tensor.dtype == dtype else tensor.to(dtype)
        return tensor
    tensor = torch.from_numpy(np.array(value, copy=True))
    return tensor if dtype is None else tensor.to(dtype)


def restore_like(value: UpdateValue, reference: UpdateValue) -> UpdateValue:
    """Return ``value`` in the container, dtype, shape (and device) of ``reference``.

    A NumPy result for a NumPy reference, a tensor on the reference's device for a tensor
    reference; values are cast to the reference's dtype.
    """
    if isinstance(reference, torch.Tensor):
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        return tensor.detach().reshape(reference.shape).to(device=reference.device, dtype=reference.dtype)
    ref = np.asarray(reference)
    array = to_numpy(value) if isinstance(value, torch.Tensor) else np.asarray(value)
    array = array.reshape(ref.shape)
    return array if array.dtype == ref.dtype else array.astype(ref.dtype)


def copy_value(value: UpdateValue) -> UpdateValue:
    """An independent copy of ``value`` in the same container and dtype."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return np.array(value, copy=True)


def _describe(value: Any) -> str:
    return type(value).__name__


def _listed(keys: Iterable[str]) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:_MAX_LISTED])
    return f"[{shown}{', ...' if len(keys) > _MAX_LISTED else ''}] ({len(keys)})"


def _entry_problems(arg: str, key: Any, value: Any) -> tuple[list[str], tuple[int, ...] | None]:
    """Problems of one entry and its shape (None when the value is not an array)."""
    if not isinstance(key, str):
        return [f"{arg} has a non-string key {key!r}"], None
    if not isinstance(value, (np.ndarray, torch.Tensor, np.generic)):
        return [f"{arg}[{key!r}] must be a numpy array or torch tensor, got {_describe(value)}"], None
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            return [f"{arg}[{key!r}] has complex dtype {value.dtype}"], tuple(value.shape)
        shape = tuple(value.shape)
        if value.is_floating_point():
            bad = _count_non_finite(to_numpy(value) if value.device.type == "cpu" else value.detach())
            if bad:
                return [f"{arg}[{key!r}] has {bad} non-finite (NaN/Inf) value(s)"], shape
        return [], shape
    array = np.asarray(value)
    shape = tuple(array.shape)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) or np.issubdtype(array.dtype, np.complexfloating):
        return [f"{arg}[{key!r}] must be real numbers, got dtype {array.dtype}"], shape
    if np.issubdtype(array.dtype, np.floating):
        bad = _count_non_finite(array)
        if bad:
            return [f"{arg}[{key!r}] has {bad} non-finite (NaN/Inf) value(s)"], shape
    return [], shape


def _count_non_finite(values: np.ndarray | torch.Tensor) -> int:
    """Number of NaN/Inf values; a finite sum proves there are none (one fast reduction)."""
    if isinstance(values, torch.Tensor):
        if bool(torch.isfinite(values.sum())):
            return 0
        return int((~torch.isfinite(values)).sum())
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(values, axis=None)):
            return 0
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def validate_update(update: Any, global_state: Any = None, *, owner: str) -> None:
    """Check an update (and the global state it applies to); every problem is reported in one error.

    Checks: ``update`` is a non-empty mapping of string keys to NumPy arrays or torch tensors of
    real numbers, with finite floating-point values; when ``global_state`` is given, it is such a
    mapping too, with exactly the same keys and the same shape for every key. Integer entries
    (``num_batches_tracked``) may be float in one and int in the other (FedAvg turns them into
    float64).

    Args:
        update: ``{key: new - old}``.
        global_state: the global model the update applies to, or None to skip the comparison.
        owner: class or function name that starts the message.

    Raises:
        TypeError: if ``update`` or ``global_state`` is not a mapping.
        DataError: naming each bad key (with both shapes for a shape mismatch).

    Example:
        >>> validate_update({"w": np.zeros((2, 3))}, {"w": np.zeros((3, 2))}, owner="GaussianNoise")
        Traceback (most recent call last):
        ...
        nvflare_gia.errors.DataError: GaussianNoise: the update does not fit the global model: update['w'] has shape (2, 3); global model has (3, 2).
    """
    if not isinstance(update, Mapping):
        raise TypeError(f"{owner}: update must be a mapping of name -> array, got {_describe(update)}.")
    if global_state is not None and not isinstance(global_state, Mapping):
        raise TypeError(f"{owner}: global_state must be a mapping of name -> array or None, got {_describe(global_state)}.")
    if not update:
        raise DataError(f"{owner}: update must hold at least one entry, got an empty mapping.")
    problems: list[str] = []
    shapes: dict[str, tuple[int, ...] | None] = {}
    for key, value in update.items():
        found, shape = _entry_problems("update", key, value)
        problems.extend(found)
        shapes[key] = shape
    if global_state is not None:
        missing = [k for k in global_state if k not in update]
        unexpected = [k for k in update if k not in global_state]
        if missing:
            problems.append(f"update lacks {_listed(missing)} entries of the global model")
        if unexpected:
            problems.append(f"update has {_listed(unexpected)} entries the global model lacks")
        for key, value in global_state.items():
            found, shape = _entry_problems("global_state", key, value)
            problems.extend(found)
            mine = shapes.get(key)
            if key in update and shape is not None and mine is not None and mine != shape:
                problems.append(f"update[{key!r}] has shape {mine}; global model has {shape}")
    if problems:
        what = "the update does not fit the global model" if global_state is not None else "malformed update"
        raise DataError(f"{owner}: {what}: " + "; ".join(problems) + ".")


def squared_norm(values: Iterable[UpdateValue]) -> float:
    """Sum of squares of all entries of ``values`` (a BLAS dot product per entry).

    Raises:
        DataError: if the sum is not finite.
    """
    total = 0.0
    for value in values:
        if isinstance(value, torch.Tensor):
            flat = value.detach().reshape(-1)
            if flat.dtype not in (torch.float32, torch.float64):
                flat = flat.to(torch.float32)
            total += float(torch.dot(flat, flat))
        else:
            flat = np.asarray(value).reshape(-1)
            if flat.dtype not in (np.float32, np.float64):
                flat = flat.astype(np.float32)
            total += float(np.dot(flat, flat))
    if not math.isfinite(total):
        raise DataError(f"squared_norm: the sum of squares must be finite, got {total!r}.")
    return total


def squared_norm_float64(tensor: torch.Tensor) -> float:
    """Sum of squares of ``tensor``'s entries accumulated in float64 (without a float64 copy of it)."""
    return float(torch.linalg.vector_norm(tensor.detach(), dtype=torch.float64)) ** 2
