"""Leakage of a reconstructed batch: RDLV, IIP, label and classifier accuracy, and the report.

:func:`evaluate_leakage` pairs reconstructions with true images (Hungarian on SSIM), averages
MSE, PSNR and SSIM over the pairs, and adds the measures below when their inputs are given.
:func:`residual_only_report` gives the measures that need no ground truth. Both use metric keys
``gia/<metric>``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from nvflare_gia.errors import ConfigError, DataError
from nvflare_gia.metrics._validation import (
    as_images,
    as_indices,
    as_labels,
    as_real,
    check_range,
    check_same_image_size,
    to_numpy,
)
from nvflare_gia.metrics.image import ImageMetric, compute_mse, compute_psnr, compute_ssim
from nvflare_gia.metrics.matching import _pairwise_cost

__all__ = [
    "DEFAULT_PRIOR_VALUE",
    "LeakageReport",
    "compute_classifier_accuracy",
    "compute_iip",
    "compute_label_accuracy",
    "compute_label_count_accuracy",
    "compute_rdlv",
    "evaluate_leakage",
    "residual_only_report",
]

DEFAULT_PRIOR_VALUE = 0.5
"""Intensity of the flat gray image used as the prior when none is given (images in [0, 1])."""

_PREFIX = "gia/"
_CLASSIFIER_BATCH = 256
# Largest max-abs difference for which a site image counts as the true image: one 8-bit grey level.
# Covers a float16 (error <= 2.5e-4) or bfloat16 (<= 2e-3) copy; distinct images differ far more.
_SAME_IMAGE_TOL = 1.0 / 255.0


def compute_rdlv(reconstruction_ssim: float, prior_ssim: float) -> float:
    """Relative data leakage value (Hatamizadeh et al., IEEE TMI 2023).

    RDLV = (SSIM(reconstruction, truth) - SSIM(prior, truth)) / SSIM(prior, truth). It is > 0 when
    the reconstruction carries more information about the truth than the attacker's prior alone,
    0 when it carries the same, < 0 when less. Higher means more leakage.

    Pass batch means, not per-image values: an image's prior SSIM can be close to 0, and the
    per-image ratio then explodes and dominates any average. The ratio of the means weighs every
    image alike and is what :func:`evaluate_leakage` reports.

    Args:
        reconstruction_ssim: mean SSIM of the reconstructions against their true images, in [-1, 1].
        prior_ssim: mean SSIM of the prior against the same true images, in (0, 1].

    Returns:
        The RDLV, a float.

    Raises:
        DataError: if a value is not finite, leaves [-1, 1], or ``prior_ssim`` is not > 0 (the
            ratio is undefined, or its sign flips, for a prior that is anti-correlated with the data).
        TypeError: if a value is not a real number.

    Example:
        >>> compute_rdlv(0.75, 0.25)
        2.0
    """
    func = "compute_rdlv"
    rec = as_real(reconstruction_ssim, func=func, arg="reconstruction_ssim", minimum=-1.0, maximum=1.0, error=DataError)
    prior = as_real(prior_ssim, func=func, arg="prior_ssim", maximum=1.0, error=DataError)
    if prior <= 0.0:
        raise DataError(
            f"{func}: prior_ssim must be > 0 (RDLV divides by it), got {prior_ssim!r}. "
            "Use a prior that resembles the data, such as the default flat gray image."
        )
    return (rec - prior) / prior


def compute_iip(
    reconstruction: Any, ground_truth_indices: Any, site_images: Any, metric: str | ImageMetric = ImageMetric.MSE
) -> float:
    """Image identifiability precision (Yin et al., CVPR 2021; breaching).

    The share of reconstructions whose nearest neighbour among ``site_images`` (the client's whole
    local data set, not only the attacked batch) is their own true image. Higher means more
    leakage: an attacker holding candidate images could tell which patient was in the batch. A tie
    between the true image and another (for example a duplicate) counts as identified, which errs
    on the side of reporting leakage. Cost: N x M distance evaluations (N x M SSIMs for "ssim").

    Args:
        reconstruction: N images of shape (N, 1, H, W) or (N, H, W).
        ground_truth_indices: N integers; ``site_images[ground_truth_indices[i]]`` is the true image
            of ``reconstruction[i]``.
        site_images: M images of the same (H, W), values in [0, 1].
        metric: ``"mse"`` (default) or ``"ssim"``, see :class:`ImageMetric`.

    Returns:
        The IIP, in [0, 1].

    Raises:
        ConfigError: if ``metric`` is not one of the choices.
        DataError: if a batch is empty, holds NaN/inf, the image sizes differ, an index is out of
            range, or the number of indices differs from N.
        TypeError: if an input or an index is not of a real numeric type.

    Example:
        >>> import numpy as np
        >>> site = np.random.default_rng(0).random((5, 8, 8))
        >>> compute_iip(site[[3, 1]], [3, 1], site)
        1.0
    """
    func = "compute_iip"
    cost = _pairwise_cost(reconstruction, site_images, metric, func=func, names=("reconstruction", "site_images"))
    num_rec, num_site = cost.shape
    indices = as_indices(ground_truth_indices, func=func, arg="ground_truth_indices", length=num_rec, upper=num_site)
    true_cost = cost[np.arange(len(indices)), indices]
    return float(np.mean(true_cost <= cost.min(axis=1)))


def compute_label_accuracy(predicted_labels: Any, true_labels: Any) -> float:
    """Share of reconstructions whose recovered label equals the true label, position by position.

    Higher means more leakage. Pass arrays already aligned by
    :func:`~nvflare_gia.metrics.match_reconstructions`; for order-free recovery (labels counted
    from the last layer's update) use :func:`compute_label_count_accuracy`.

    Args:
        predicted_labels: N integer class indices, shape (N,) or (N, 1).
        true_labels: N integer class indices in the same order.

    Returns:
        The accuracy, in [0, 1].

    Raises:
        DataError: if the lengths differ, a shape is wrong, or there are no labels.
        TypeError: if the labels are not integers.

    Example:
        >>> compute_label_accuracy([0, 1, 1, 0], [0, 1, 0, 0])
        0.75
    """
    func = "compute_label_accuracy"
    pred = as_labels(predicted_labels, func=func, arg="predicted_labels")
    true = as_labels(true_labels, func=func, arg="true_labels")
    if pred.shape != true.shape:
        raise DataError(
            f"{func}: predicted_labels and true_labels must have the same length, "
            f"got shapes {tuple(np.shape(predicted_labels))!r} and {tuple(np.shape(true_labels))!r}."
        )
    return float(np.mean(pred == true))


def compute_label_count_accuracy(predicted_labels: Any, true_labels: Any) -> float:
    """Share of labels recovered as a multiset, ignoring order.

    Overlap / max(len(predicted), len(true)), where the overlap counts each class
    min(times predicted, times true); extra and missing labels both lower it. Higher means more
    leakage: the label distribution of the batch is known.

    Args:
        predicted_labels: integer class indices, shape (P,) or (P, 1), any order.
        true_labels: integer class indices, shape (N,) or (N, 1).

    Returns:
        The multiset accuracy, in [0, 1].

    Raises:
        DataError: if a shape is wrong or there are no labels.
        TypeError: if the labels are not integers.

    Example:
        >>> compute_label_count_accuracy([1, 1, 0, 2], [0, 1, 2, 2])
        0.75
    """
    func = "compute_label_count_accuracy"
    pred = Counter(as_labels(predicted_labels, func=func, arg="predicted_labels").tolist())
    true = Counter(as_labels(true_labels, func=func, arg="true_labels").tolist())
    overlap = sum((pred & true).values())
    return overlap / max(sum(pred.values()), sum(true.values()))


def compute_classifier_accuracy(classifier: torch.nn.Module, reconstruction: Any, true_labels: Any) -> float:
    """Accuracy of a reference classifier on the reconstructions ("attacker accuracy", Jiang et al. 2025).

    If a classifier trained on real data still recognises the class of each reconstruction, the
    reconstructions carry the diagnostic content of the images. Higher means more leakage. The
    classifier runs in eval mode without gradients, on the device and dtype of its parameters,
    and every submodule's train/eval mode is restored afterwards. Outputs of shape (N, C), C >= 2,
    are read by argmax; a single logit, shape (N,) or (N, 1), as class 1 when > 0.

    Args:
        classifier: a module mapping images of shape (N, 1, H, W) to logits.
        reconstruction: N images of shape (N, 1, H, W) or (N, H, W), values in [0, 1].
        true_labels: N integer class indices, aligned with ``reconstruction``.

    Returns:
        The accuracy, in [0, 1].

    Raises:
        DataError: if a batch is empty, holds NaN/inf, the lengths differ, or the output has an
            unexpected shape.
        TypeError: if ``classifier`` is not a ``torch.nn.Module`` or an input is not numeric.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
        >>> _ = net[1].weight.data.fill_(1.0), net[1].bias.data.fill_(-2.0)  # class 1 if sum > 2
        >>> compute_classifier_accuracy(net, torch.tensor([0.9, 0.1]).repeat_interleave(4).view(2, 2, 2), [1, 0])
        1.0
    """
    func = "compute_classifier_accuracy"
    if not isinstance(classifier, torch.nn.Module):
        raise TypeError(f"{func}: classifier must be a torch.nn.Module, got {type(classifier).__name__!r}.")
    images = as_images(reconstruction, func=func, arg="reconstruction")
    labels = as_labels(true_labels, func=func, arg="true_labels")
    if len(labels) != len(images):
        raise DataError(
            f"{func}: true_labels must have one label per reconstruction, "
            f"got shapes {tuple(np.shape(true_labels))!r} and {tuple(np.shape(reconstruction))!r}."
        )
    reference = next(classifier.parameters(), None)
    if reference is None:
        reference = next(classifier.buffers(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    modes = [(module, module.training) for module in classifier.modules()]
    predictions = []
    try:
        classifier.eval()
        with torch.no_grad():
            for start in range(0, len(images), _CLASSIFIER_BATCH):
                # A copy: torch.from_numpy rejects negative strides (``x[::-1]``) and warns on read-only arrays.
                batch = torch.from_numpy(images[start : start + _CLASSIFIER_BATCH].copy()).unsqueeze(1)
                logits = classifier(batch.to(device=device, dtype=dtype))
                predictions.append(_logits_to_classes(logits, len(batch), func=func))
    finally:
        for module, training in modes:
            module.training = training
    return float(np.mean(np.concatenate(predictions) == labels))


def _logits_to_classes(logits: torch.Tensor, batch_size: int, *, func: str) -> np.ndarray:
    """Class indices from (N, C) logits by argmax, or from one logit per image by sign."""
    if logits.ndim == 2 and logits.shape[0] == batch_size and logits.shape[1] >= 2:
        return logits.argmax(dim=1).cpu().numpy()
    if logits.shape in ((batch_size,), (batch_size, 1)):
        return (logits.reshape(-1) > 0).long().cpu().numpy()
    raise DataError(
        f"{func}: classifier output must have shape ({batch_size}, C) with C >= 2, ({batch_size}, 1) or "
        f"({batch_size},), got {tuple(logits.shape)!r}."
    )


_RESIDUAL_KEYS = ("update_residual", "bn_residual")


def residual_only_report(update_residual: float, bn_residual: float | None) -> dict[str, float]:
    """The leakage measures that need no ground truth, as ``gia/<metric>`` keys.

    Both are attack-side residuals: how far the reconstruction is from reproducing the client's
    update, and the BatchNorm batch statistics recovered from it. Lower means the attack explains
    the update better, which usually means more leakage.

    Args:
        update_residual: final update-matching loss of the attack, finite and >= 0.
        bn_residual: final BatchNorm-statistics loss, finite and >= 0, or None for a model
            without BatchNorm (the key is then omitted).

    Returns:
        ``{"gia/update_residual": ..., "gia/bn_residual": ...}`` with Python floats.

    Raises:
        DataError: if a residual is negative or not finite.
        TypeError: if a residual is not a real number.

    Example:
        >>> residual_only_report(0.25, None)
        {'gia/update_residual': 0.25}
    """
    func = "residual_only_report"
    as_real(update_residual, func=func, arg="update_residual", minimum=0.0, error=DataError)
    return _residuals(update_residual, bn_residual, func=func)


def _residuals(update_residual: float | None, bn_residual: float | None, *, func: str) -> dict[str, float]:
    """Validated residuals as ``gia/<name>`` floats, None values omitted."""
    values = {"update_residual": update_residual, "bn_residual": bn_residual}
    return {
        _PREFIX + name: as_real(value, func=func, arg=name, minimum=0.0, error=DataError)
        for name, value in values.items()
        if value is not None
    }


@dataclass(frozen=True)
class LeakageReport:
    """Leakage of one reconstructed batch, averaged over matched (reconstruction, truth) pairs.

    Direction (which way means more leakage): ``ssim``, ``psnr``, ``rdlv``, ``iip``,
    ``label_accuracy``, ``label_count_accuracy`` and ``attacker_accuracy`` higher; ``mse``, ``update_residual`` and
    ``bn_residual`` lower. ``prior_ssim`` is the baseline of ``rdlv`` and ``prior_attacker_accuracy``
    the baseline of ``attacker_accuracy``, not leakage measures. Optional measures are None when
    their inputs were not given.

    Attributes:
        ssim: mean SSIM over pairs.
        psnr: mean PSNR over pairs, in dB, each capped at ``PSNR_CAP_DB``.
        mse: mean MSE over pairs.
        rdlv: RDLV of the batch means ``ssim`` and ``prior_ssim``.
        prior_ssim: mean SSIM of the prior against the matched true images.
        iip: image identifiability precision, or None.
        label_accuracy: recovered label equals the true one, over pairs, or None.
        attacker_accuracy: reference classifier's accuracy on the matched reconstructions, or None.
        per_image_ssim: SSIM of each pair, in the order of ``matching``.
        matching: ``(reconstruction_index, ground_truth_index)`` of each pair.
        update_residual: see :func:`residual_only_report`, or None.
        bn_residual: see :func:`residual_only_report`, or None.
        num_images: number of matched pairs, min(#reconstructions, #true images).
        prior_attacker_accuracy: the reference classifier's accuracy on the prior in place of each
            matched reconstruction, or None: what the attacker gets without the update (a
            classifier that calls a featureless image "pneumonia" is right on every pneumonia
            image, so ``attacker_accuracy`` counts as leakage only above this).
        label_count_accuracy: the recovered labels as a multiset against the true ones, whatever
            the pairing (:func:`compute_label_count_accuracy`), or None. With several images that
            all look like the prior the pairing is arbitrary, so ``label_accuracy`` can read 0
            although every label was recovered; this says what the labels themselves leak.
    """

    ssim: float
    psnr: float
    mse: float
    rdlv: float
    prior_ssim: float
    iip: float | None
    label_accuracy: float | None
    attacker_accuracy: float | None
    per_image_ssim: tuple[float, ...]
    matching: tuple[tuple[int, int], ...]
    update_residual: float | None
    bn_residual: float | None
    num_images: int
    prior_attacker_accuracy: float | None = None
    label_count_accuracy: float | None = None

    def __post_init__(self) -> None:
        """Check that every value is finite and the pair counts agree, so ``to_dict`` is JSON-safe.

        Raises:
            DataError: if a value is NaN/inf or the counts disagree.
        """
        for name in ("ssim", "psnr", "mse", "rdlv", "prior_ssim", "iip", "label_accuracy", "attacker_accuracy", "prior_attacker_accuracy",
                     "label_count_accuracy"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise DataError(f"LeakageReport: {name} must be finite, got {value!r}.")
        for name in _RESIDUAL_KEYS:
            value = getattr(self, name)
            if value is not None:
                as_real(value, func="LeakageReport", arg=name, minimum=0.0, error=DataError)
        if not all(math.isfinite(value) for value in self.per_image_ssim):
            raise DataError(f"LeakageReport: per_image_ssim must be finite, got {self.per_image_ssim!r}.")
        if self.num_images < 1 or not (self.num_images == len(self.per_image_ssim) == len(self.matching)):
            raise DataError(
                "LeakageReport: num_images must be >= 1 and equal len(per_image_ssim) and len(matching), "
                f"got {self.num_images!r}, {len(self.per_image_ssim)} and {len(self.matching)}."
            )

    def to_dict(self) -> dict[str, float]:
        """Flat ``gia/<metric>`` scalars for logging (TensorBoard, FLARE analytics, JSON).

        Returns:
            Python floats only, keys ``gia/ssim``, ``gia/psnr``, ``gia/mse``, ``gia/rdlv``,
            ``gia/prior_ssim``, ``gia/iip``, ``gia/label_accuracy``, ``gia/attacker_accuracy``,
            ``gia/update_residual``, ``gia/bn_residual``, ``gia/num_images``,
            ``gia/prior_attacker_accuracy``, ``gia/label_count_accuracy``; keys whose value
            is None are omitted. ``per_image_ssim`` and ``matching`` are not included.
        """
        skip = {"per_image_ssim", "matching"}
        out = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name not in skip and value is not None:
                out[_PREFIX + field.name] = float(value)
        return out


def evaluate_leakage(
    reconstruction: Any,
    ground_truth: Any,
    *,
    prior: Any = None,
    reconstructed_labels: Any = None,
    true_labels: Any = None,
    site_images: Any = None,
    ground_truth_indices: Any = None,
    classifier: torch.nn.Module | None = None,
    update_residual: float | None = None,
    bn_residual: float | None = None,
) -> LeakageReport:
    """Score a reconstructed batch against the true batch.

    First pairs reconstructions with true images one-to-one, maximising the summed SSIM
    (Hungarian algorithm, see :func:`~nvflare_gia.metrics.match_reconstructions`); every measure
    is then averaged over the min(N, M) matched pairs, and unmatched images are ignored. RDLV is
    computed from the batch means of SSIM and prior SSIM (see :func:`compute_rdlv`).

    Args:
        reconstruction: N reconstructed images, shape (N, 1, H, W) or (N, H, W).
        ground_truth: M true images of the same (H, W), values in [0, 1].
        prior: what the attacker knows without the update: one image of shape (H, W), (1, H, W)
            or (1, 1, H, W) compared with every true image, or M images, one per true image.
            None (default) means a flat gray image of value 0.5.
        reconstructed_labels: N labels, one per reconstruction; needs ``true_labels``.
        true_labels: M labels, one per true image; needed by ``reconstructed_labels`` and
            ``classifier``.
        site_images: the client's whole local data set, for IIP; needs ``ground_truth_indices``.
        ground_truth_indices: M indices; ``site_images[ground_truth_indices[j]]`` must equal
            ``ground_truth[j]``.
        classifier: reference classifier for the attacker accuracy and its prior baseline; needs
            ``true_labels``.
        update_residual: update-matching loss of the attack (copied into the report).
        bn_residual: BatchNorm-statistics loss of the attack (copied into the report).

    Returns:
        A :class:`LeakageReport`.

    Raises:
        ConfigError: if an input is given without the one it needs.
        DataError: for empty, non-finite, out-of-range or mis-shaped inputs, labels or indices
            of the wrong length, or site images that do not hold the true images at
            ``ground_truth_indices``; also for a prior whose mean SSIM is not > 0.
        TypeError: if an input is not of a real numeric type.

    Example:
        >>> import numpy as np
        >>> truth = np.random.default_rng(0).random((2, 16, 16))
        >>> report = evaluate_leakage(truth[::-1], truth)
        >>> report.matching, round(report.ssim, 6)
        (((0, 1), (1, 0)), 1.0)
    """
    func = "evaluate_leakage"
    for arg, value, needs, other in (
        ("reconstructed_labels", reconstructed_labels, "true_labels", true_labels),
        ("classifier", classifier, "true_labels", true_labels),
        ("site_images", site_images, "ground_truth_indices", ground_truth_indices),
        ("ground_truth_indices", ground_truth_indices, "site_images", site_images),
    ):
        if value is not None and other is None:
            raise ConfigError(f"{func}: {arg} needs {needs}, got {needs}=None.")

    rec = as_images(reconstruction, func=func, arg="reconstruction")
    gt = as_images(ground_truth, func=func, arg="ground_truth")
    check_same_image_size(
        rec, gt, raw_first=reconstruction, raw_second=ground_truth, names=("reconstruction", "ground_truth"), func=func
    )
    check_range(gt, data_range=1.0, func=func, arg="ground_truth")
    cost = _pairwise_cost(rec, gt, ImageMetric.SSIM, func=func)
    rec_idx, gt_idx = linear_sum_assignment(cost)
    rec_m, gt_m = rec[rec_idx], gt[gt_idx]
    per_image_ssim = -cost[rec_idx, gt_idx]

    priors = _as_prior(prior, gt, func=func)
    prior_ssim = float(np.mean(compute_ssim(priors[gt_idx], gt_m)))
    ssim = float(np.mean(per_image_ssim))

    label_accuracy = label_count_accuracy = attacker_accuracy = prior_attacker_accuracy = iip = None
    if true_labels is not None:
        labels = as_labels(true_labels, func=func, arg="true_labels")
        _check_length(labels, len(gt), func=func, arg="true_labels", per="true image")
        if reconstructed_labels is not None:
            rec_labels = as_labels(reconstructed_labels, func=func, arg="reconstructed_labels")
            _check_length(rec_labels, len(rec), func=func, arg="reconstructed_labels", per="reconstruction")
            label_accuracy = compute_label_accuracy(rec_labels[rec_idx], labels[gt_idx])
            label_count_accuracy = compute_label_count_accuracy(rec_labels, labels)
        if classifier is not None:
            attacker_accuracy = compute_classifier_accuracy(classifier, rec_m, labels[gt_idx])
            prior_attacker_accuracy = compute_classifier_accuracy(classifier, priors[gt_idx], labels[gt_idx])
    if site_images is not None:
        site = as_images(site_images, func=func, arg="site_images")
        check_same_image_size(
            gt, site, raw_first=ground_truth, raw_second=site_images, names=("ground_truth", "site_images"), func=func
        )
        indices = as_indices(
            ground_truth_indices, func=func, arg="ground_truth_indices", length=len(gt), upper=len(site)
        )
        _check_site_holds_truth(site, indices, gt, func=func)
        iip = compute_iip(rec_m, indices[gt_idx], site)

    residuals = _residuals(update_residual, bn_residual, func=func)
    return LeakageReport(
        ssim=ssim,
        psnr=float(np.mean(compute_psnr(rec_m, gt_m))),
        mse=float(np.mean(compute_mse(rec_m, gt_m))),
        rdlv=compute_rdlv(ssim, prior_ssim),
        prior_ssim=prior_ssim,
        iip=iip,
        label_accuracy=label_accuracy,
        attacker_accuracy=attacker_accuracy,
        per_image_ssim=tuple(float(value) for value in per_image_ssim),
        matching=tuple((int(r), int(g)) for r, g in zip(rec_idx, gt_idx)),
        update_residual=residuals.get(_PREFIX + "update_residual"),
        bn_residual=residuals.get(_PREFIX + "bn_residual"),
        num_images=len(rec_idx),
        prior_attacker_accuracy=prior_attacker_accuracy,
        label_count_accuracy=label_count_accuracy,
    )


def _as_prior(prior: Any, ground_truth: np.ndarray, *, func: str) -> np.ndarray:
    """One prior image per true image, shape (M, H, W): broadcast a single image or check a stack."""
    count, height, width = ground_truth.shape
    if prior is None:
        return np.full(ground_truth.shape, DEFAULT_PRIOR_VALUE)
    arr = to_numpy(prior)
    raw_shape = tuple(arr.shape)
    images = as_images(arr[None] if arr.ndim == 2 else arr, func=func, arg="prior")
    if images.shape[1:] != (height, width) or len(images) not in (1, count):
        raise DataError(
            f"{func}: prior must be one image of shape ({height}, {width}), (1, {height}, {width}) or "
            f"(1, 1, {height}, {width}), or one per true image ({count}), got shape {raw_shape!r}."
        )
    check_range(images, data_range=1.0, func=func, arg="prior")
    return np.broadcast_to(images, ground_truth.shape)


def _check_length(values: np.ndarray, expected: int, *, func: str, arg: str, per: str) -> None:
    if len(values) != expected:
        raise DataError(f"{func}: {arg} must hold one label per {per} ({expected}), got {len(values)}.")


def _check_site_holds_truth(site: np.ndarray, indices: np.ndarray, ground_truth: np.ndarray, *, func: str) -> None:
    """Catch a wrong index mapping: the site images at the given indices must be the true images."""
    diff = np.abs(site[indices] - ground_truth).max(axis=(1, 2))
    bad = np.flatnonzero(diff > _SAME_IMAGE_TOL)
    if bad.size:
        j = int(bad[0])
        raise DataError(
            f"{func}: site_images[ground_truth_indices[{j}]] must equal ground_truth[{j}], got a max abs "
            f"difference of {float(diff[j]):.4g} at index {int(indices[j])}. Check ground_truth_indices."
        )
