"""Recover the client's BatchNorm batch statistics from its update.

After Hatamizadeh et al., IEEE TMI 2023: in train mode every BatchNorm layer updates its running
buffers as ``new = (1 - m) * old + m * batch`` with momentum ``m``, so a server that sees the
global buffers and their update reads off the statistics of the client's private batch.

PyTorch stores the *unbiased* batch variance in ``running_var`` (``n / (n - 1)`` times the biased
variance used for normalisation, ``n = batch * H * W`` per channel). Everything in this module
works with that unbiased variance, and so does the attack's BatchNorm matching; multiply by
``(n - 1) / n`` for the biased one (:func:`biased_variance`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch

from nvflare_gia.errors import ConfigError, DataError

__all__ = ["BNStatistics", "biased_variance", "bn_layer_names", "ema_step_weights", "recover_bn_statistics"]

logger = logging.getLogger(__name__)


class BNStatistics(NamedTuple):
    """Per-channel statistics of one BatchNorm layer's input.

    Attributes:
        mean: batch mean, shape ``(channels,)``.
        var: UNBIASED batch variance (what PyTorch writes into ``running_var``), shape ``(channels,)``.
    """

    mean: torch.Tensor
    var: torch.Tensor


def bn_layer_names(state: Mapping) -> list[str]:
    """Names of the BatchNorm layers of a state dict (prefixes that own ``running_mean`` and ``running_var``)."""
    names = []
    for key in state:
        if key.endswith(".running_mean") and key[: -len("running_mean")] + "running_var" in state:
            names.append(key[: -len(".running_mean")])
    return names


def ema_step_weights(momentum: float, num_steps: int) -> np.ndarray:
    """Weights of each local step's batch statistic in the statistic :func:`recover_bn_statistics` returns.

    With ``S`` steps, ``new = (1 - m)**S * old + sum_t m (1 - m)**(S - 1 - t) * batch_t``, so the
    recovered value is the average of the per-step batch statistics with weights
    ``m (1 - m)**(S - 1 - t) / (1 - (1 - m)**S)`` (later steps weigh more; they sum to 1).

    Args:
        momentum: BatchNorm momentum in (0, 1].
        num_steps: number of local steps ``S`` (>= 1).

    Returns:
        Array of ``S`` weights in step order.
    """
    m = float(momentum)
    steps = np.arange(int(num_steps))
    raw = m * (1.0 - m) ** (int(num_steps) - 1 - steps)
    return raw / raw.sum()


def _as_tensor(value, key: str, what: str) -> torch.Tensor:
    try:
        return torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value).detach().to("cpu", torch.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"recover_bn_statistics: {what}[{key!r}] is not numeric ({type(value).__name__}).") from exc


def recover_bn_statistics(
    global_state: Mapping,
    update: Mapping,
    momentum: float | None | Mapping[str, float | None] = 0.1,
    num_steps: int = 1,
) -> dict[str, BNStatistics]:
    """Batch mean and unbiased batch variance of every BatchNorm layer, from the buffers' update.

    For one local step the result is exact: ``batch = (old + delta - (1 - m) * old) / m``. For
    ``S > 1`` steps it is the momentum-weighted average of the per-step batch statistics, with the
    weights of :func:`ema_step_weights` (a layer with ``momentum=None``, a cumulative average,
    gets the plain average over the ``S`` steps). The attack's simulator averages its own per-step
    statistics the same way before comparing.

    Args:
        global_state: the global model's state dict (tensors or numpy arrays).
        update: ``new_state - global_state`` for at least the BatchNorm buffers.
        momentum: BatchNorm momentum, one value for every layer that owns ``running_mean`` and
            ``running_var``, or ``{layer_name: momentum}`` for exactly the layers to recover (e.g.
            :func:`nvflare_gia.attack.bn_momenta` of the model: InstanceNorm layers keep those
            buffers too, but normalise each image with its own statistics).
        num_steps: number of local optimizer steps (forward passes in train mode) of the round.

    Returns:
        ``{layer_name: BNStatistics(mean, var)}`` with float32 CPU tensors, ``var`` unbiased.

    Raises:
        DataError: if a BatchNorm buffer is missing from ``update`` or has another shape.
        ConfigError: for a momentum outside (0, 1] or ``num_steps`` < 1.

    Example:
        >>> import torch
        >>> g = {"bn.running_mean": torch.zeros(2), "bn.running_var": torch.ones(2)}
        >>> u = {"bn.running_mean": torch.tensor([0.1, 0.2]), "bn.running_var": torch.tensor([0.0, 0.1])}
        >>> recover_bn_statistics(g, u, 0.1)["bn"].mean
        tensor([1., 2.])
    """
    if int(num_steps) != num_steps or num_steps < 1:
        raise ConfigError(f"recover_bn_statistics: num_steps must be an integer >= 1, got {num_steps!r}.")
    out: dict[str, BNStatistics] = {}
    layers = list(momentum) if isinstance(momentum, Mapping) else bn_layer_names(global_state)
    for layer in layers:
        m = momentum[layer] if isinstance(momentum, Mapping) else momentum
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 < m <= 1.0):
            raise ConfigError(f"recover_bn_statistics: momentum of {layer!r} must be in (0, 1] or None, got {m!r}.")
        stats = []
        for buffer in ("running_mean", "running_var"):
            key = f"{layer}.{buffer}"
            if key not in update or key not in global_state:
                raise DataError(f"recover_bn_statistics: update or global_state lacks {key!r}; BatchNorm buffers must be sent.")
            old = _as_tensor(global_state[key], key, "global_state")
            delta = _as_tensor(update[key], key, "update")
            if tuple(delta.shape) != tuple(old.shape):
                raise DataError(
                    f"recover_bn_statistics: update[{key!r}] has shape {tuple(delta.shape)}; "
                    f"global model has {tuple(old.shape)}."
                )
            new = old + delta
            if m is None:
                count_key = f"{layer}.num_batches_tracked"
                if count_key not in global_state:
                    raise DataError(f"recover_bn_statistics: cumulative BatchNorm needs {count_key!r} in global_state.")
                n0 = float(np.asarray(global_state[count_key]))
                batch = ((n0 + num_steps) * new - n0 * old) / num_steps
            else:
                decay = (1.0 - float(m)) ** int(num_steps)
                batch = (new - decay * old) / (1.0 - decay)
            stats.append(batch.to(torch.float32))
        out[layer] = BNStatistics(mean=stats[0], var=stats[1])
    logger.debug("recovered BatchNorm statistics of %d layers", len(out))
    return out


def biased_variance(unbiased: torch.Tensor, count: int) -> torch.Tensor:
    """Convert an unbiased variance over ``count`` values per channel into the biased one.

    Args:
        unbiased: the variance PyTorch stores in ``running_var``.
        count: values per channel, ``batch * H * W`` of the layer's input (>= 2).

    Returns:
        ``unbiased * (count - 1) / count``.

    Raises:
        ConfigError: if ``count`` < 2.
    """
    if count < 2:
        raise ConfigError(f"biased_variance: count must be >= 2, got {count!r}.")
    return unbiased * (count - 1) / count
