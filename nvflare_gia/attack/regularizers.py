"""Image priors and BatchNorm-statistics matching for the attack, by name.

Each image prior takes the current images ``(N, C, H, W)`` (values in [0, 1] except for the range
penalty, which sees the raw values) and the prior image ``(1 or N, C, H, W)``, and returns a
scalar; lower is more image-like. :func:`bn_matching_loss` is the BatchNorm term ``R_BN`` of
Hatamizadeh et al., IEEE TMI 2023 (after DeepInversion, Yin et al., CVPR 2020).
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Callable, Mapping

import torch

from nvflare_gia.attack.bn_stats import BNStatistics
from nvflare_gia.errors import ConfigError

__all__ = [
    "REGULARIZERS",
    "RegularizerName",
    "bn_matching_loss",
    "look_up_regularizer",
    "prior_distance",
    "range_penalty",
    "total_variation",
]


class RegularizerName(str, enum.Enum):
    """Names of the image priors (see :data:`REGULARIZERS`)."""

    TV = "tv"
    RANGE = "range"
    PRIOR = "prior"


def total_variation(images: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Anisotropic total variation: mean absolute difference of vertical and horizontal neighbours."""
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return dx + dy


def range_penalty(images: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared distance of the raw image values to the valid range [0, 1]."""
    return (torch.relu(images - 1.0).pow(2) + torch.relu(-images).pow(2)).mean()


def prior_distance(images: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared distance to the prior image (0 without a prior)."""
    if prior is None:
        return images.new_zeros(())
    return (images - prior).pow(2).mean()


REGULARIZERS: dict[str, Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    RegularizerName.TV.value: total_variation,
    RegularizerName.RANGE.value: range_penalty,
    RegularizerName.PRIOR.value: prior_distance,
}


def look_up_regularizer(name: str) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """Return the image prior named ``name`` from :data:`REGULARIZERS`.

    Raises:
        ConfigError: for an unknown name (lists the choices and suggests the closest).
    """
    key = str(name.value if isinstance(name, enum.Enum) else name).lower()
    if key not in REGULARIZERS:
        close = difflib.get_close_matches(key, list(REGULARIZERS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"regularizer must be one of {list(REGULARIZERS)}, got {name!r}.{hint}")
    return REGULARIZERS[key]


def bn_matching_loss(
    simulated: Mapping[str, BNStatistics],
    recovered: Mapping[str, BNStatistics],
    layer_weights: Mapping[str, float] | None = None,
) -> torch.Tensor:
    """BatchNorm-statistics matching: ``sum_l w_l (||mu_l - mu*_l||_2 + ||var_l - var*_l||_2)``.

    Args:
        simulated: per layer, batch mean and unbiased variance on the dummy images (differentiable).
        recovered: per layer, the statistics recovered from the update.
        layer_weights: optional per-layer weights (default 1).

    Returns:
        The scalar loss (0 when every layer matches).
    """
    total = None
    for name, target in recovered.items():
        stats = simulated[name]
        term = (stats.mean - target.mean).norm() + (stats.var - target.var).norm()
        if layer_weights is not None:
            term = term * float(layer_weights.get(name, 1.0))
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total
