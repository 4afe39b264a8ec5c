"""Recover the client's labels from the update of the bias of the network's logits: its last linear
layer's, or a bias that adds to the logits as it is (a 1 x 1 convolution before global pooling;
:func:`find_classifier`).

With mean cross-entropy, the gradient of the classifier bias on a batch is
``mean_i (softmax_i - onehot_i)``. Hence (Zhao et al., iDLG, 2020; Hatamizadeh et al., IEEE TMI
2023):

* one image: only the true class has a negative bias gradient, so it is the only class whose bias
  moves up under SGD (and under Adam, which keeps the sign): exact;
* several images, SGD: ``count_c ≈ N * (mean_softmax_c + Δb_c / (lr * K) + wd * b_c)`` where ``K``
  sums the momentum coefficients of all steps (``K = 1`` for one plain SGD step) and the mean
  softmax is estimated from the global model on the prior image, normalised with the recovered
  BatchNorm batch statistics. The estimates are rounded to a multiset of ``N`` labels (largest
  remainders);
* otherwise (no classifier bias, Adam with several images) the labels are ambiguous and the attack
  optimises soft labels jointly with the images.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nvflare_gia.attack.bn_stats import BNStatistics
from nvflare_gia.attack.threat_model import ThreatModel
from nvflare_gia.errors import ConfigError
from nvflare_gia.training import OptimizerName

__all__ = [
    "LabelRecovery",
    "LabelStrategy",
    "counts_to_labels",
    "find_classifier",
    "look_up_label_strategy",
    "recover_labels",
    "spread_over_batches",
]

logger = logging.getLogger(__name__)

_AMBIGUOUS_MARGIN = 0.1


class LabelStrategy(str, enum.Enum):
    """How the attack obtains the labels of the dummy images.

    ``auto``: analytic when the update determines the labels (one image; or SGD with a classifier
    bias), soft otherwise. ``analytic``: always the analytic estimate (sign for one image, counts
    for more, always rounded) when there is one; fails over to soft only when the update cannot
    determine the labels (no classifier bias; Adam with several images). ``soft``: optimise soft
    labels jointly with the images. ``auto`` also turns to soft labels when a count estimate lies
    within ``0.1`` of a half-integer, so that rounding would be a coin flip.
    """

    AUTO = "auto"
    ANALYTIC = "analytic"
    SOFT = "soft"


def look_up_label_strategy(value: str | LabelStrategy) -> LabelStrategy:
    """Return the :class:`LabelStrategy` named ``value``.

    Raises:
        ConfigError: for an unknown name (lists the choices and suggests the closest).
    """
    if isinstance(value, LabelStrategy):
        return value
    choices = [s.value for s in LabelStrategy]
    key = str(value).lower()
    if key not in choices:
        close = difflib.get_close_matches(key, choices, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"label_strategy must be one of {choices}, got {value!r}.{hint}")
    return LabelStrategy(key)


@dataclasses.dataclass(frozen=True)
class LabelRecovery:
    """Labels recovered from an update.

    Attributes:
        labels: integer labels ``(num_images,)`` (a sorted multiset: the update gives the counts,
            not the order; for a round of several steps the attack spreads them over the steps
            with :func:`spread_over_batches`), or ``None`` when the attack must optimise soft labels.
        method: ``"sign"``, ``"count"`` or ``"soft"``.
        estimates: the real-valued per-class count estimates before rounding (``None`` for soft).
    """

    labels: np.ndarray | None
    method: str
    estimates: np.ndarray | None = None


def find_classifier(model: nn.Module, num_classes: int, input_shape: Sequence[int] | None = None) -> str | None:
    """Name of the module whose bias is the bias of the logits, which label recovery reads.

    The last ``nn.Linear`` with ``num_classes`` outputs. A network without one (e.g. a 1 x 1
    convolution to the classes before global pooling) is probed when ``input_shape`` is given: the
    last module with a ``num_classes``-entry bias qualifies if, on random inputs, each logit moves by
    exactly the change of its own bias entry and no other.

    Args:
        model: the network (not modified).
        num_classes: number of classes.
        input_shape: ``(C, H, W)`` of one input image, for the probe; ``None`` looks for ``nn.Linear`` only.

    Returns:
        The module name, or ``None``.
    """
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            found = name
    if found is not None or input_shape is None:
        return found
    biased = [
        name for name, module in model.named_modules()
        if isinstance(getattr(module, "bias", None), nn.Parameter) and module.bias.shape == (num_classes,)
    ]
    return biased[-1] if biased and _bias_is_logit_bias(model, biased[-1], num_classes, input_shape) else None


def _bias_is_logit_bias(model: nn.Module, name: str, num_classes: int, input_shape: Sequence[int]) -> bool:
    """Whether d logits[:, c] / d bias = one-hot(c) for every image of a random probe batch (eval mode)."""
    net = copy.deepcopy(model).to("cpu", torch.float32).eval()
    bias = dict(net.named_modules())[name].bias
    probe = torch.rand((2, *input_shape), generator=torch.Generator().manual_seed(0))
    logits = net(probe)
    if logits.shape != (2, num_classes):
        return False
    for image in range(2):
        for c in range(num_classes):
            (grad,) = torch.autograd.grad(logits[image, c], bias, retain_graph=True, allow_unused=True)
            if grad is None or not torch.allclose(grad, F.one_hot(torch.tensor(c), num_classes).float(), atol=1e-5):
                return False
    return True


def counts_to_labels(estimates: np.ndarray, num_images: int) -> np.ndarray:
    """Round real-valued class counts to a multiset of ``num_images`` labels (largest remainders).

    Args:
        estimates: per-class count estimates ``(num_classes,)``; negative values count as 0.
        num_images: size of the multiset.

    Returns:
        Sorted integer labels ``(num_images,)``.
    """
    est = np.clip(np.asarray(estimates, dtype=np.float64), 0.0, None)
    if est.sum() <= 0:
        est = np.ones_like(est)
    est = est * (num_images / est.sum())
    counts = np.floor(est).astype(np.int64)
    remainder = est - counts
    for idx in np.argsort(-remainder, kind="stable")[: num_images - int(counts.sum())]:
        counts[idx] += 1
    return np.repeat(np.arange(len(counts)), counts).astype(np.int64)


def spread_over_batches(labels: np.ndarray, batch_sizes: tuple[int, ...]) -> np.ndarray:
    """Arrange a multiset of labels over consecutive mini-batches so that each holds every class in
    proportion to its size.

    In a round of several steps the update depends on which labels each step saw, and the client's
    shuffling makes an even composition the likeliest one. In sorted order a 4 + 4 split of the
    labels ``[0, 0, 0, 0, 1, 1, 1, 1]`` would put one class in each step, the least likely
    composition (``docs/benchmarks.md``). Slot ``j`` of a batch of size ``s`` takes the rank
    ``(j + 0.5) / s`` in the sorted labels, ties by batch order.

    Args:
        labels: integer labels ``(num_images,)``, in any order.
        batch_sizes: sizes of one epoch's consecutive mini-batches, summing to ``num_images``.

    Returns:
        The same labels, batch by batch (``[0:s_0]``, ``[s_0:s_0 + s_1]``, ...).

    Raises:
        ValueError: if the batch sizes do not sum to the number of labels.

    Example:
        >>> spread_over_batches(np.array([0, 0, 0, 0, 1, 1, 1, 1]), (4, 4)).tolist()
        [0, 0, 1, 1, 0, 0, 1, 1]
    """
    ordered = np.sort(np.asarray(labels, dtype=np.int64), kind="stable")
    if sum(batch_sizes) != len(ordered) or any(size < 1 for size in batch_sizes):
        raise ValueError(f"spread_over_batches: batch_sizes {batch_sizes} must be >= 1 and sum to {len(ordered)} labels.")
    slots = [((j + 0.5) / size, batch, j) for batch, size in enumerate(batch_sizes) for j in range(size)]
    starts = np.concatenate([[0], np.cumsum(batch_sizes)[:-1]]).astype(np.int64)
    out = np.empty_like(ordered)
    for label, (_, batch, j) in zip(ordered, sorted(slots)):
        out[starts[batch] + j] = label
    return out


def _momentum_coefficient_sum(threat: ThreatModel) -> float:
    """``K = sum_t sum_{k=0}^{S-1-t} mu**k``: total weight of all step gradients in the SGD update."""
    mu = float(threat.training.momentum)
    steps = threat.num_steps
    return float(sum(sum(mu**k for k in range(steps - t)) for t in range(steps)))


@torch.no_grad()
def _mean_softmax_on_prior(
    model: nn.Module, prior: torch.Tensor, bn_statistics: Mapping[str, BNStatistics] | None
) -> np.ndarray:
    """Softmax of the global model on the prior, BatchNorm normalising with the recovered batch statistics."""
    net = copy.deepcopy(model).to("cpu", torch.float32)
    if bn_statistics:
        modules = dict(net.named_modules())
        for name, stats in bn_statistics.items():
            if name in modules:
                modules[name].running_mean.copy_(stats.mean.float())
                modules[name].running_var.copy_(stats.var.float().clamp_min(0.0))
    net.eval()
    probs = torch.softmax(net(prior.to("cpu", torch.float32)), dim=1)
    return probs.mean(dim=0).double().numpy()


def recover_labels(
    model: nn.Module,
    global_state: Mapping,
    update: Mapping,
    threat: ThreatModel,
    *,
    strategy: str | LabelStrategy = LabelStrategy.AUTO,
    prior: torch.Tensor | None = None,
    bn_statistics: Mapping[str, BNStatistics] | None = None,
) -> LabelRecovery:
    """Recover the labels of the client's images from the classifier's update.

    Args:
        model: the network with the global weights loaded (not modified).
        global_state: the global state dict (for the classifier bias before the round).
        update: the client's update (needs the classifier bias entry for analytic recovery).
        threat: the client's training configuration.
        strategy: ``auto``, ``analytic`` or ``soft`` (see :class:`LabelStrategy`).
        prior: prior images ``(k, C, H, W)`` for the mean-softmax estimate of the count method;
            ``None`` uses a flat gray 0.5 image.
        bn_statistics: recovered BatchNorm batch statistics used to normalise the prior.

    Returns:
        The :class:`LabelRecovery`.

    Raises:
        ConfigError: for an unknown strategy.
    """
    strategy = look_up_label_strategy(strategy)
    if strategy is LabelStrategy.SOFT:
        return LabelRecovery(labels=None, method="soft")
    classifier = find_classifier(model, threat.num_classes, (threat.in_channels, threat.image_size, threat.image_size))
    bias_key = f"{classifier}.bias" if classifier is not None else None
    if bias_key is None or bias_key not in update or bias_key not in global_state:
        logger.info("label recovery: no classifier bias with %d outputs; optimising soft labels", threat.num_classes)
        return LabelRecovery(labels=None, method="soft")
    adam = threat.training.optimizer == OptimizerName.ADAM.value
    delta = torch.as_tensor(np.asarray(update[bias_key], dtype=np.float64)).reshape(-1).numpy()
    bias = torch.as_tensor(np.asarray(global_state[bias_key], dtype=np.float64)).reshape(-1).numpy()
    n = threat.num_images
    if not adam:
        k = _momentum_coefficient_sum(threat)
        # Per-image mean gradient of the bias, corrected for weight decay: Δb ≈ -lr*K*(ḡ + wd*b).
        mean_grad = -delta / (threat.training.lr * k) - threat.training.weight_decay * bias
    else:
        mean_grad = -delta  # Adam keeps the sign only
    if n == 1:
        label = int(np.argmin(mean_grad))
        if int(np.sum(mean_grad < 0)) != 1:
            logger.info("label recovery: %d classes with a negative bias gradient; taking the most negative", int(np.sum(mean_grad < 0)))
        return LabelRecovery(labels=np.array([label], dtype=np.int64), method="sign", estimates=(mean_grad < 0).astype(float))
    if adam:
        logger.info("label recovery: Adam keeps no gradient magnitudes for %d images; optimising soft labels", n)
        return LabelRecovery(labels=None, method="soft")
    if prior is None:
        prior = torch.full((1, threat.in_channels, threat.image_size, threat.image_size), 0.5)
    mean_softmax = _mean_softmax_on_prior(model, prior, bn_statistics)
    estimates = n * (mean_softmax - mean_grad)
    labels = counts_to_labels(estimates, n)
    distance_to_half = np.abs(np.abs(estimates - np.round(estimates)) - 0.5)
    if strategy is LabelStrategy.AUTO and float(distance_to_half.min()) < _AMBIGUOUS_MARGIN:
        logger.info("label recovery: ambiguous count estimates %s; optimising soft labels", np.round(estimates, 3).tolist())
        return LabelRecovery(labels=None, method="soft", estimates=estimates)
    logger.info("label recovery: count estimates %s -> labels %s", np.round(estimates, 3).tolist(), labels.tolist())
    return LabelRecovery(labels=labels, method="count", estimates=estimates)
