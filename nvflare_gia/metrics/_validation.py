"""Private input checks shared by the metrics modules (not part of the public API)."""

from __future__ import annotations

import difflib
import math
import numbers
from enum import Enum
from typing import Any, TypeVar

import numpy as np
import torch

from nvflare_gia.errors import ConfigError, DataError, GIAError

__all__: list[str] = []

_E = TypeVar("_E", bound=Enum)


def to_numpy(value: Any) -> np.ndarray:
    """Return ``value`` as a NumPy array without copying when it already is one."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16
            tensor = tensor.float()
        return tensor.numpy()
    return np.asarray(value)


def as_images(value: Any, *, func: str, arg: str) -> np.ndarray:
    """Convert a batch of one-channel images to a float64 array of shape (N, H, W).

    Args:
        value: numpy array or torch tensor of shape (N, 1, H, W) or (N, H, W).
        func: name of the public function, for error messages.
        arg: name of the argument, for error messages.

    Returns:
        A float64 array of shape (N, H, W).

    Raises:
        TypeError: if the values are not real numbers.
        DataError: if the shape is wrong, the batch is empty or a value is NaN or infinite.
    """
    arr = to_numpy(value)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{func}: {arg} must have a real numeric dtype, got {str(arr.dtype)!r}.")
    shape = tuple(arr.shape)
    if not (arr.ndim == 3 or (arr.ndim == 4 and shape[1] == 1)):
        raise DataError(f"{func}: {arg} must have shape (N, 1, H, W) or (N, H, W), got {shape!r}.")
    if arr.size == 0:
        raise DataError(f"{func}: {arg} must hold at least one non-empty image, got shape {shape!r}.")
    check_finite(arr, func=func, arg=arg)
    return arr.reshape(shape[0], shape[-2], shape[-1]).astype(np.float64, copy=False)


def check_finite(arr: np.ndarray, *, func: str, arg: str) -> None:
    """Raise ``DataError`` naming the first NaN or infinite entry of ``arr``.

    Raises:
        DataError: if ``arr`` holds a NaN or an infinite value.
    """
    bad = ~np.isfinite(arr)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{func}: {arg} must be finite, got {float(arr[index])!r} at index {index!r} "
            f"({int(bad.sum())} non-finite value(s) in all)."
        )


def check_range(arr: np.ndarray, *, data_range: float, func: str, arg: str) -> None:
    """Raise ``DataError`` unless every value of ``arr`` lies in [0, data_range].

    Raises:
        DataError: if a value lies outside [0, data_range] (beyond a 1e-6 rounding margin).
    """
    low, high = float(arr.min()), float(arr.max())
    tol = 1e-6 * data_range
    if low < -tol or high > data_range + tol:
        raise DataError(
            f"{func}: {arg} must lie in [0, {data_range:g}], got values in [{low:g}, {high:g}]. "
            "Scale the images first (for example uint8 / 255) or pass the matching data_range."
        )


def check_same_shape(
    first: np.ndarray, second: np.ndarray, *, raw_first: Any, raw_second: Any, names: tuple[str, str], func: str
) -> None:
    """Raise ``DataError`` naming both original shapes when two image batches differ in shape.

    Raises:
        DataError: if the (N, H, W) shapes differ.
    """
    if first.shape != second.shape:
        raise DataError(
            f"{func}: {names[0]} and {names[1]} must have the same shape, "
            f"got {tuple(_shape(raw_first))!r} and {tuple(_shape(raw_second))!r}."
        )


def check_same_image_size(
    first: np.ndarray, second: np.ndarray, *, raw_first: Any, raw_second: Any, names: tuple[str, str], func: str
) -> None:
    """Raise ``DataError`` naming both original shapes when two batches hold images of different (H, W).

    Raises:
        DataError: if the image sizes differ (the batch sizes may differ).
    """
    if first.shape[1:] != second.shape[1:]:
        raise DataError(
            f"{func}: {names[0]} and {names[1]} must hold images of the same size (H, W), "
            f"got shapes {tuple(_shape(raw_first))!r} and {tuple(_shape(raw_second))!r}."
        )


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(np.shape(value))


def as_real(
    value: Any,
    *,
    func: str,
    arg: str,
    minimum: float | None = None,
    maximum: float | None = None,
    strict: bool = False,
    error: type[GIAError] = ConfigError,
) -> float:
    """Return ``value`` as a finite Python float, optionally bounded below.

    Args:
        value: a real number, a NumPy scalar or a one-element torch tensor.
        func: name of the public function, for error messages.
        arg: name of the argument, for error messages.
        minimum: lower bound, or None for no bound.
        maximum: upper bound (inclusive), or None for no bound.
        strict: if True the lower bound is exclusive.
        error: the error class for a value out of bounds (``ConfigError`` for settings,
            ``DataError`` for measured values).

    Returns:
        The value as a float.

    Raises:
        TypeError: if ``value`` is not a real number.
        GIAError: ``error``, if ``value`` is not finite or violates a bound.
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{func}: {arg} must be a real number, got {value!r}.")
    out = float(value)
    if not math.isfinite(out):
        raise error(f"{func}: {arg} must be finite, got {value!r}.")
    if minimum is not None and (out <= minimum if strict else out < minimum):
        sign = ">" if strict else ">="
        raise error(f"{func}: {arg} must be {sign} {minimum:g}, got {value!r}.")
    if maximum is not None and out > maximum:
        raise error(f"{func}: {arg} must be <= {maximum:g}, got {value!r}.")
    return out


def as_labels(value: Any, *, func: str, arg: str) -> np.ndarray:
    """Convert class labels to a 1-D int64 array.

    Args:
        value: integer class indices, shape (N,) or (N, 1), as a sequence, numpy array or torch tensor.
        func: name of the public function, for error messages.
        arg: name of the argument, for error messages.

    Returns:
        A 1-D int64 array.

    Raises:
        TypeError: if the labels are not integers.
        DataError: if the shape is wrong or there are no labels.
    """
    arr = to_numpy(value)
    shape = tuple(arr.shape)
    if arr.ndim == 2 and shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(
            f"{func}: {arg} must have shape (N,) or (N, 1) of class indices, got {shape!r}. "
            "For soft labels or logits pass their argmax."
        )
    if arr.size == 0:
        raise DataError(f"{func}: {arg} must hold at least one label, got shape {shape!r}.")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{func}: {arg} must hold integer class indices, got dtype {str(arr.dtype)!r}.")
    return arr.astype(np.int64, copy=False)


def as_indices(value: Any, *, func: str, arg: str, length: int, upper: int) -> np.ndarray:
    """Convert ``length`` integer indices into [0, upper) to a 1-D int64 array.

    Raises:
        TypeError: if the indices are not integers.
        DataError: if the shape or length is wrong or an index is out of range.
    """
    arr = to_numpy(value)
    shape = tuple(arr.shape)
    if arr.ndim != 1 or arr.size != length:
        raise DataError(f"{func}: {arg} must have shape ({length},), one index per image, got {shape!r}.")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{func}: {arg} must hold integer indices, got dtype {str(arr.dtype)!r}.")
    bad = (arr < 0) | (arr >= upper)
    if bad.any():
        position = int(np.argmax(bad))
        raise DataError(
            f"{func}: {arg} must lie in [0, {upper}), got {int(arr[position])!r} at position {position}."
        )
    return arr.astype(np.int64, copy=False)


def look_up_option(value: Any, choices: type[_E], *, func: str, arg: str) -> _E:
    """Return the member of the str Enum ``choices`` named by ``value``.

    Raises:
        ConfigError: if ``value`` is not one of the choices; the message lists them and suggests the closest.
    """
    if isinstance(value, choices):
        return value
    names = [member.value for member in choices]
    if isinstance(value, str) and value in names:
        return choices(value)
    message = f"{func}: {arg} must be one of {tuple(names)!r}, got {value!r}."
    close = difflib.get_close_matches(str(value).lower(), names, n=1)
    if close:
        message += f" Did you mean {close[0]!r}?"
    raise ConfigError(message)
