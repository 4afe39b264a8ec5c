"""The BatchNorm-aware gradient inversion attack of Hatamizadeh et al., IEEE TMI 2023.

"Do Gradient Inversion Attacks Make Federated Learning Unsafe?" (Hatamizadeh, Yin, Molchanov,
Myronenko, Li, Dogra, Feng, Flores, Kautz, Xu, Roth; IEEE TMI 2023). The server

1. recovers the batch statistics of every BatchNorm layer from the update of its running buffers
   (:mod:`nvflare_gia.attack.bn_stats`),
2. recovers the labels from the classifier's update, or optimises soft labels
   (:mod:`nvflare_gia.attack.labels`),
3. optimises dummy images so that a differentiable replay of the client's local training
   (:mod:`nvflare_gia.attack.simulate`) reproduces the update (an objective from
   :data:`nvflare_gia.attack.objectives.OBJECTIVES`), while the dummies' BatchNorm batch statistics
   match the recovered ones, with image priors (:data:`nvflare_gia.attack.regularizers.REGULARIZERS`),
4. within iteration and wall-clock budgets, with several restarts, each optimised coarse to fine
   (the images are parametrised at 1/4, then 1/2, then full resolution), combined either by
   keeping the restart with the lowest matching loss or (default) by the consensus mean of the
   restarts within a tolerance of the best loss, aligned to the best one. Nothing is ever chosen
   with the ground truth.

Why a consensus by default: the update does pin the image (``SmallCNN``, each of the first 8
training images at batch 1: the true image reproduces it to a matching loss of about 1e-5, the
same image shifted by 8 pixels or mirrored scores 0.23-0.61), but every restart stops on a plateau
near 0.02 where images of different layouts tie, even restarts started from the true image plus
noise or from its 16x16 downsampling (which end at SSIM 0.6-0.8), so the matching loss of a
restart hardly predicts its SSIM (``docs/benchmarks.md``). The mean of several restarts estimates
what they agree on, which is a better estimate of the image (benchmark: SSIM 0.42 vs 0.33 at
batch 1). :meth:`GradientInversionAttack.matching_loss` scores given images, e.g. the truth in an
audit. The no-ground-truth residuals in :class:`AttackResult` always describe the best restart.

The attack uses only what the server sees: the global state dict, the update of every state-dict
entry, the training configuration (:class:`nvflare_gia.attack.threat_model.ThreatModel`), an
optional prior image that is not from the attacked client, and optional public candidate images
(e.g. a validation split). For a one-image update the candidates whose simulated updates fit the
observed one best give the prior: the update picks public images like the client's (on the NIH
tuning images the mean of the best 10 beat the validation mean on 16 of 16 images, SSIM 0.575
against 0.505). The attack is pulled toward a given prior (``prior_weight``), never toward the
flat default.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from nvflare_gia.attack.bn_stats import BNStatistics, recover_bn_statistics
from nvflare_gia.attack.labels import (
    LabelRecovery,
    LabelStrategy,
    look_up_label_strategy,
    recover_labels,
    spread_over_batches,
)
from nvflare_gia.attack.objectives import l2_objective, look_up_objective
from nvflare_gia.attack.regularizers import (
    bn_matching_loss,
    prior_distance,
    range_penalty,
    total_variation,
)
from nvflare_gia.attack.simulate import LocalTrainingSimulator, layers_beyond_stride, read_dropout_masks
from nvflare_gia.attack.threat_model import ThreatModel, bn_momenta
from nvflare_gia.errors import ConfigError, DataError
from nvflare_gia.models import build_model
from nvflare_gia.threads import torch_threads

__all__ = [
    "DEFAULT_MAX_IMAGES",
    "PRIOR_NAMES",
    "check_prior_name",
    "prior_from_validation",
    "AttackConfig",
    "AttackResult",
    "DeviceName",
    "GradientInversionAttack",
    "InitName",
    "Parametrization",
    "RestartSelection",
    "resolve_device",
    "validate_update",
]

logger = logging.getLogger(__name__)

#: Default of the largest number of local images an attack is run on: the server-side widget and
#: the client-side self-audit both skip clients with more. The attack optimises one dummy image per
#: local image, so its cost grows with the local dataset, and large local datasets leak least.
DEFAULT_MAX_IMAGES = 32

#: What a server may give the attack as prior knowledge, by name: ``flat`` (gray 0.5),
#: ``val_mean`` (the mean image of a validation split) and ``val_retrieval`` (that mean, and the
#: split's images as candidates; see :meth:`GradientInversionAttack.reconstruct`).
PRIOR_NAMES = ("flat", "val_mean", "val_retrieval")


def check_prior_name(owner: str, name: Any) -> str:
    """Return ``name`` if it is one of :data:`PRIOR_NAMES`.

    Raises:
        ConfigError: ``"{owner}: prior must be one of [...], got {name!r}."`` otherwise.
    """
    if not isinstance(name, str) or name not in PRIOR_NAMES:
        raise ConfigError(f"{owner}: prior must be one of {list(PRIOR_NAMES)}, got {name!r}.")
    return name


def prior_from_validation(name: str, val_images: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The ``prior`` and ``candidates`` arguments of :meth:`GradientInversionAttack.reconstruct` for a
    prior of :data:`PRIOR_NAMES`; the prior is also the image RDLV is measured against.

    Args:
        name: a name of :data:`PRIOR_NAMES`.
        val_images: the validation images ``(M, C, H, W)``; unused (may be None) for ``flat``.

    Returns:
        ``(prior, candidates)``: ``(None, None)`` for ``flat``, ``(mean, None)`` for ``val_mean``,
        ``(mean, val_images)`` for ``val_retrieval``.

    Raises:
        ConfigError: for an unknown name.
    """
    if check_prior_name("prior_from_validation", name) == "flat":
        return None, None
    return val_images.mean(axis=0), (val_images if name == "val_retrieval" else None)


def _look_up(enum_cls: type[enum.Enum], value: Any, owner: str, arg: str) -> str:
    choices = [e.value for e in enum_cls]
    key = str(value.value if isinstance(value, enum.Enum) else value).lower()
    if key not in choices:
        close = difflib.get_close_matches(key, choices, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{owner}: {arg} must be one of {choices}, got {value!r}.{hint}")
    return key


class Parametrization(str, enum.Enum):
    """How the optimised variables map to images in [0, 1].

    ``sigmoid``: ``x = sigmoid(z)``. ``clamp``: ``x = z``, projected onto [0, 1] after every step.
    ``penalty``: ``x = z`` unconstrained with the range penalty, clamped only at the end.
    """

    SIGMOID = "sigmoid"
    CLAMP = "clamp"
    PENALTY = "penalty"


class InitName(str, enum.Enum):
    """Initialisation of the dummy images: ``noise`` (uniform in [0, 1]) or ``prior`` (prior + noise)."""

    NOISE = "noise"
    PRIOR = "prior"


class DeviceName(str, enum.Enum):
    """Where the attack runs: ``auto`` (CUDA when available, CPU otherwise), ``cpu`` or ``cuda``."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


def _check_number(owner: str, name: str, value: Any, *, low: float, high: float = math.inf, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{owner}: {name} must be a finite number, got {value!r}.")
    if value < low or value > high or (low_open and value == low):
        bound = f"> {low}" if low_open else f">= {low}"
        if math.isfinite(high):
            bound += f" and <= {high}"
        raise ConfigError(f"{owner}: {name} must be {bound}, got {value!r}.")


class RestartSelection(str, enum.Enum):
    """How the restarts become one reconstruction.

    ``best``: the restart with the lowest matching loss. ``consensus``: the pixel-wise mean of all
    restarts, each first aligned one-to-one to the best restart's images (Hungarian matching on
    the squared distance between reconstructions, within equal labels), after the group
    consistency of Yin et al., "See through Gradients", CVPR 2021. Neither uses the ground truth.
    """

    BEST = "best"
    CONSENSUS = "consensus"


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Configuration of :class:`GradientInversionAttack`.

    Defaults were chosen on the benchmark protocol (64x64 chest X-rays, ``SmallCNN``, one SGD step)
    on images other than the benchmark's, averaged over several images and seeds.

    Args:
        objective: update-matching objective, a key of
            :data:`nvflare_gia.attack.objectives.OBJECTIVES` (``l2``, ``cosine``, ``layer_cosine``).
        bn_weight: weight of the BatchNorm-statistics matching term (>= 0).
        max_feature_stride: match the BatchNorm statistics and the parameter updates only of
            layers whose output is downsampled from the input by at most this factor per side
            (integer >= 1; height x width x stride^2 >= image_size^2); linear layers are always
            matched. MONAI's ResNet-18 at 64 pixels has 20 BatchNorm layers down to 4x4; the
            statistics of ``layer3`` and ``layer4`` (stride 8 and 16) outweighed the rest of the
            loss and the attack ended below the flat prior; without them it beats it
            (docs/benchmarks.md). ``SmallCNN``'s deepest layer is at stride 4 and is kept: dropping it
            lost SSIM at 64 and at 28 pixels.
        tv_weight: weight of the total-variation prior (>= 0).
        range_weight: weight of the range penalty (>= 0; used by ``parametrization="penalty"``).
        prior_weight: weight of the squared distance to the prior image (>= 0). Applied only when
            :meth:`GradientInversionAttack.reconstruct` is given a prior or retrieves one from
            candidates: the default flat gray image says nothing of the content, so nothing is
            pulled toward it.
        label_strategy: ``auto``, ``analytic`` or ``soft`` (see
            :class:`nvflare_gia.attack.labels.LabelStrategy`).
        parametrization: ``sigmoid``, ``clamp`` or ``penalty`` (see :class:`Parametrization`).
        init: ``noise`` or ``prior`` (see :class:`InitName`).
        max_iterations: optimisation steps per restart (>= 1).
        max_seconds: wall-clock budget of one :meth:`GradientInversionAttack.reconstruct` call,
            shared equally by the restarts; ``None`` for no time limit (then the result is
            deterministic on CPU).
        restarts: independent restarts (>= 1), combined by ``restart_selection``. Under a time
            budget, fewer are run when the budget cannot give each ``min_restart_iterations``
            (measured on two calibration iterations); at least one per thread always runs.
        min_restart_iterations: iterations a restart should get under a time budget (>= 1).
        parallel_restarts: restarts optimised at the same time (>= 1), each on its own thread with
            its own replay of the client's training; the restarts are shared among the threads
            in turn (restart ``r`` on thread ``r % parallel_restarts``), each thread splitting the
            time budget among its own. Restarts are independent, so they use several CPU cores
            better than torch's threads inside one restart: with ``num_threads=1``, two threads on
            a 2-core machine ran 1.7-1.9x the iterations per second of one, where two torch
            threads made iterations slower (docs/benchmarks.md). Without a time budget the result
            is the same for any value.
        restart_selection: ``best`` or ``consensus`` (see :class:`RestartSelection`).
        consensus_tolerance: ``consensus`` averages only the restarts whose matching loss is at
            most this factor times the best one (>= 1), so a failed restart cannot spoil it.
        lr: Adam learning rate on the image variables (> 0).
        lr_decay: within each resolution stage the learning rate decays by a cosine from ``lr``
            to ``lr * lr_decay`` (in [0, 1]).
        scale_factors: coarse-to-fine schedule: the images are optimised at
            ``image_size // factor`` pixels (bilinearly upsampled for the simulation), stage by
            stage; decreasing integers >= 1 ending with 1. ``(1,)`` optimises at full
            resolution only.
        scale_fractions: share of each restart's budget (iterations and seconds) per stage; one
            positive number per factor, summing to 1.
        retrieval_k: with candidate images and one attacked image, the mean of the ``retrieval_k``
            candidates whose simulated updates match the observed one best becomes the prior
            (>= 1; see :meth:`GradientInversionAttack.reconstruct`).
        retrieval_share: largest share of ``max_seconds`` the ranking of the candidates may take
            (in (0, 1]); candidates not ranked by then are left out, and the stats say how many.
        seed: seed of the initialisations (each restart gets its own stream).
        device: ``auto``, ``cpu`` or ``cuda``.
        log_every: seconds between progress log lines (> 0).
        num_threads: CPU threads torch may use during the attack (restored afterwards); ``None``
            leaves the process setting alone. On a busy machine one thread is often fastest for
            small batches.

    Raises:
        ConfigError: for an unknown option or a value outside its range.

    Example:
        >>> AttackConfig(max_iterations=200, restarts=1, max_seconds=None).objective
        'cosine'
    """

    objective: str = "cosine"
    bn_weight: float = 1.0
    max_feature_stride: int = 4
    tv_weight: float = 3.0
    range_weight: float = 1.0
    prior_weight: float = 3.0
    label_strategy: str = LabelStrategy.AUTO.value
    parametrization: str = Parametrization.SIGMOID.value
    init: str = InitName.NOISE.value
    max_iterations: int = 10_000
    max_seconds: float | None = 60.0
    restarts: int = 5
    min_restart_iterations: int = 500
    parallel_restarts: int = 1
    restart_selection: str = RestartSelection.CONSENSUS.value
    consensus_tolerance: float = 1.5
    lr: float = 0.2
    lr_decay: float = 0.01
    scale_factors: tuple[int, ...] = (4, 2, 1)
    scale_fractions: tuple[float, ...] = (0.3, 0.3, 0.4)
    retrieval_k: int = 10
    retrieval_share: float = 0.25
    seed: int = 0
    device: str = DeviceName.AUTO.value
    log_every: float = 10.0
    num_threads: int | None = None

    def __post_init__(self) -> None:
        owner = "AttackConfig"
        object.__setattr__(self, "objective", _objective_key(self.objective))
        try:
            object.__setattr__(self, "label_strategy", look_up_label_strategy(self.label_strategy).value)
        except ConfigError as exc:
            raise ConfigError(f"{owner}: {exc}") from None
        object.__setattr__(self, "parametrization", _look_up(Parametrization, self.parametrization, owner, "parametrization"))
        object.__setattr__(self, "init", _look_up(InitName, self.init, owner, "init"))
        object.__setattr__(self, "device", _look_up(DeviceName, self.device, owner, "device"))
        object.__setattr__(
            self, "restart_selection", _look_up(RestartSelection, self.restart_selection, owner, "restart_selection")
        )
        for name in ("bn_weight", "tv_weight", "range_weight", "prior_weight"):
            _check_number(owner, name, getattr(self, name), low=0.0)
        _check_number(owner, "lr", self.lr, low=0.0, low_open=True)
        _check_number(owner, "consensus_tolerance", self.consensus_tolerance, low=1.0)
        _check_number(owner, "lr_decay", self.lr_decay, low=0.0, high=1.0)
        _check_number(owner, "log_every", self.log_every, low=0.0, low_open=True)
        _check_number(owner, "retrieval_share", self.retrieval_share, low=0.0, high=1.0, low_open=True)
        for name in ("max_iterations", "restarts", "min_restart_iterations", "parallel_restarts", "retrieval_k", "max_feature_stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{owner}: {name} must be an integer >= 1, got {value!r}.")
        if self.max_seconds is not None:
            _check_number(owner, "max_seconds", self.max_seconds, low=0.0, low_open=True)
        if self.num_threads is not None and (isinstance(self.num_threads, bool) or not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise ConfigError(f"{owner}: num_threads must be an integer >= 1 or None, got {self.num_threads!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"{owner}: seed must be an integer, got {self.seed!r}.")
        factors = tuple(self.scale_factors) if isinstance(self.scale_factors, (list, tuple)) else None
        if (
            not factors
            or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in factors)
            or any(a <= b for a, b in itertools.pairwise(factors))
            or factors[-1] != 1
        ):
            raise ConfigError(
                f"{owner}: scale_factors must be decreasing integers >= 1 ending with 1, e.g. (4, 2, 1), got {self.scale_factors!r}."
            )
        fractions = tuple(self.scale_fractions) if isinstance(self.scale_fractions, (list, tuple)) else None
        if (
            not fractions
            or len(fractions) != len(factors)
            or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f <= 0 for f in fractions)
            or abs(sum(fractions) - 1.0) > 1e-6
        ):
            raise ConfigError(
                f"{owner}: scale_fractions must be {len(factors)} positive numbers (one per scale factor) summing to 1, "
                f"got {self.scale_fractions!r}."
            )
        object.__setattr__(self, "scale_factors", factors)
        object.__setattr__(self, "scale_fractions", tuple(float(f) for f in fractions))


def _objective_key(name: Any) -> str:
    try:
        look_up_objective(name)
    except ConfigError as exc:
        raise ConfigError(f"AttackConfig: {exc}") from None
    return str(name.value if isinstance(name, enum.Enum) else name).lower()


@dataclasses.dataclass
class AttackResult:
    """What the attack returns.

    Attributes:
        images: reconstructions, float32 ``(num_images, C, H, W)`` in [0, 1].
        labels: integer labels ``(num_images,)`` (recovered, or the argmax of the soft labels).
        stats: ``iterations`` (all restarts), ``seconds``, ``ms_per_iteration`` (the time an
            iteration took on its thread: restarts run side by side can each take longer), ``best_loss``
            (matching loss, objective + ``bn_weight`` x BN term, of the best restart),
            ``update_residual`` (``||sim - ΔW|| / ||ΔW||`` over the parameters for the best
            restart's images; lower = the update is better explained = more leakage),
            ``bn_residual`` (relative error of the BatchNorm statistics, best restart),
            ``returned_matching_loss`` (matching loss of the returned images; for a consensus it
            is higher than ``best_loss``: a mean of reconstructions does not itself reproduce the
            update), ``restart_losses``, ``best_restart``, ``restart_selection``,
            ``restarts_combined``, ``label_method``, ``device``, ``stopped`` (``should_stop``
            ended it early).
        soft_labels: class probabilities ``(num_images, num_classes)`` when labels were optimised.
    """

    images: np.ndarray
    labels: np.ndarray
    stats: dict[str, Any]
    soft_labels: np.ndarray | None = None

    def to_dict(self) -> dict[str, float]:
        """Metrics that need no ground truth, under ``gia/<metric>`` keys (lower residual or matching
        loss = more leakage); ``gia/matching_loss`` is the best restart's ``best_loss``;
        ``gia/retrieval_ranked`` the number of candidates ranked, when the prior was retrieved."""
        out = {
            "gia/update_residual": float(self.stats["update_residual"]),
            "gia/bn_residual": float(self.stats["bn_residual"]),
            "gia/attack_seconds": float(self.stats["seconds"]),
            "gia/attack_iterations": float(self.stats["iterations"]),
            "gia/matching_loss": float(self.stats["best_loss"]),
        }
        if "retrieval" in self.stats:
            out["gia/retrieval_ranked"] = float(self.stats["retrieval"]["ranked"])
        return out


def resolve_device(name: str) -> torch.device:
    """Map ``auto``/``cpu``/``cuda`` to a device (``auto``: CUDA when available).

    Raises:
        ConfigError: for ``cuda`` when no CUDA device is available, or an unknown name.
    """
    key = _look_up(DeviceName, name, "resolve_device", "device")
    if key == DeviceName.AUTO.value:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if key == DeviceName.CUDA.value and not torch.cuda.is_available():
        raise ConfigError("resolve_device: device 'cuda' was requested but CUDA is not available; use 'auto' or 'cpu'.")
    return torch.device(key)


def _to_tensor(value: Any, where: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").clone()
    try:
        array = np.array(value, copy=True)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where} is not an array ({type(value).__name__}).") from exc
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DataError(f"{where} is not numeric (dtype {array.dtype}).")
    return torch.from_numpy(array)


def validate_update(model: nn.Module, global_state: Mapping, update: Mapping) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Check ``global_state`` and ``update`` against ``model``'s state dict and return CPU copies.

    Every problem is collected first and reported in one error.

    Args:
        model: the network the threat model names.
        global_state: the global state dict the server sent (tensors or numpy arrays).
        update: ``new_state - global_state`` for every state-dict entry.

    Returns:
        ``(global_state, update)`` as new dicts of tensors in the model's dtypes.

    Raises:
        TypeError: if either argument is not a mapping.
        DataError: naming each missing, unexpected, mis-shaped or non-finite entry and both shapes.
    """
    for arg, value in (("global_state", global_state), ("update", update)):
        if not isinstance(value, Mapping):
            raise TypeError(f"GradientInversionAttack: {arg} must be a mapping of name -> tensor, got {type(value).__name__}.")
    expected = model.state_dict()
    problems: list[str] = []
    out_global: dict[str, torch.Tensor] = {}
    out_update: dict[str, torch.Tensor] = {}
    for arg, source, out in (("global_state", global_state, out_global), ("update", update, out_update)):
        missing = [k for k in expected if k not in source]
        unexpected = [k for k in source if k not in expected]
        if missing:
            problems.append(f"{arg} lacks {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)} entries the model has)")
        if unexpected:
            problems.append(f"{arg} has {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} which the model lacks")
        for key, reference in expected.items():
            if key not in source:
                continue
            try:
                tensor = _to_tensor(source[key], f"{arg}[{key!r}]")
            except DataError as exc:
                problems.append(str(exc))
                continue
            if tuple(tensor.shape) != tuple(reference.shape):
                against = "global model has" if arg == "update" else "model expects"
                problems.append(f"{arg}[{key!r}] has shape {tuple(tensor.shape)}; {against} {tuple(reference.shape)}")
                continue
            tensor = tensor.to(reference.dtype)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                problems.append(f"{arg}[{key!r}] has non-finite values")
                continue
            out[key] = tensor
    if problems:
        raise DataError("GradientInversionAttack: malformed input: " + "; ".join(problems) + ".")
    return out_global, out_update


def _prepare_prior(prior: Any, threat: ThreatModel) -> torch.Tensor:
    shape = (threat.in_channels, threat.image_size, threat.image_size)
    if prior is None:
        return torch.full((1, *shape), 0.5)
    tensor = _to_tensor(prior, "prior")
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    tensor = tensor.float()
    if tensor.dim() == 2 and threat.in_channels == 1:
        tensor = tensor[None]
    if tensor.dim() == 3:
        tensor = tensor[None]
    if tensor.dim() != 4 or tuple(tensor.shape[1:]) != shape or tensor.shape[0] not in (1, threat.num_images):
        raise DataError(
            f"GradientInversionAttack: prior has shape {tuple(_to_tensor(prior, 'prior').shape)}; expected "
            f"{shape}, (1, *{shape}) or ({threat.num_images}, *{shape})."
        )
    if not bool(torch.isfinite(tensor).all()) or float(tensor.min()) < 0.0 or float(tensor.max()) > 1.0:
        raise DataError("GradientInversionAttack: prior values must be finite and in [0, 1].")
    return tensor


def _prepare_candidates(candidates: Any, threat: ThreatModel) -> torch.Tensor:
    tensor = _to_tensor(candidates, "candidates").float()
    shape = (threat.in_channels, threat.image_size, threat.image_size)
    if tensor.dim() != 4 or tuple(tensor.shape[1:]) != shape or tensor.shape[0] < 1:
        raise DataError(
            f"GradientInversionAttack: candidates must have shape (M, *{shape}) with M >= 1, got {tuple(tensor.shape)}."
        )
    if not bool(torch.isfinite(tensor).all()) or float(tensor.min()) < 0.0 or float(tensor.max()) > 1.0:
        raise DataError("GradientInversionAttack: candidate values must be finite and in [0, 1].")
    return tensor


class GradientInversionAttack:
    """BatchNorm-aware gradient inversion after Hatamizadeh et al., IEEE TMI 2023.

    Args:
        config: the attack configuration; ``None`` uses the :class:`AttackConfig` defaults.
        should_stop: called at every iteration; once it returns true a reconstruction stops
            after its current iteration and returns what it has (``stats["stopped"]``), so an
            owner that gives up on an attack (the widget at the end of a run) does not leave it
            running on the CPU, nor in torch code while the process exits. ``None``: only the
            budgets stop it.

    Raises:
        TypeError: if ``config`` is not an :class:`AttackConfig` or ``should_stop`` is not callable.

    Example:
        >>> import copy, torch
        >>> from nvflare_gia.models import SmallCNN
        >>> from nvflare_gia.training import TrainingConfig, train_local
        >>> _ = torch.manual_seed(0)
        >>> model = SmallCNN()
        >>> before = copy.deepcopy(model.state_dict())
        >>> _ = train_local(model, torch.rand(1, 1, 16, 16), torch.tensor([1]), 1, TrainingConfig())
        >>> update = {k: v - before[k] for k, v in model.state_dict().items()}
        >>> attack = GradientInversionAttack(AttackConfig(max_iterations=20, restarts=1, max_seconds=None))
        >>> result = attack.reconstruct(before, update, ThreatModel(image_size=16))
        >>> result.images.shape, result.labels.tolist()
        ((1, 1, 16, 16), [1])
    """

    def __init__(self, config: AttackConfig | None = None, should_stop: Callable[[], bool] | None = None) -> None:
        if config is None:
            config = AttackConfig()
        if not isinstance(config, AttackConfig):
            raise TypeError(f"GradientInversionAttack: config must be an AttackConfig, got {type(config).__name__}.")
        if should_stop is not None and not callable(should_stop):
            raise TypeError(f"GradientInversionAttack: should_stop must be None or callable, got {type(should_stop).__name__}.")
        self.config = config
        self.should_stop = should_stop

    def _stop_requested(self) -> bool:
        return self.should_stop is not None and bool(self.should_stop())

    def reconstruct(
        self, global_state: Mapping, update: Mapping, threat: ThreatModel, prior: Any = None, candidates: Any = None
    ) -> AttackResult:
        """Reconstruct the client's images from its update.

        Args:
            global_state: the global model's state dict the server sent (BatchNorm buffers included).
            update: ``new_state - global_state`` for every state-dict entry (FLARE ``WEIGHT_DIFF``).
            threat: the client's training configuration as the server knows it.
            prior: an image not from the attacked client, ``(H, W)``, ``(C, H, W)``, ``(1, C, H, W)``
                or ``(num_images, C, H, W)`` in [0, 1]; ``None`` is a flat gray 0.5 image. It
                initialises (``init="prior"``), regularises (``prior_weight``, only for a given
                prior) and drives the mean-softmax estimate of label counting.
            candidates: public images ``(M, C, H, W)`` in [0, 1] that are not the client's (e.g. a
                validation split). With one attacked image, each candidate's simulated update is
                scored by the objective against the observed one, and the mean of the
                ``retrieval_k`` best replaces ``prior``: the update picks the public images that
                resemble the client's. With several images they are not used (a per-image ranking
                measured no gain; ``docs/benchmarks.md``).

        Returns:
            The :class:`AttackResult`; with candidates ranked, ``stats["retrieval"]`` holds how
            many were ranked and the indices and objective values of the chosen ones.

        Raises:
            TypeError: if ``threat`` is not a :class:`ThreatModel` or a state is not a mapping.
            DataError: for a malformed update or global state (missing key, wrong shape,
                non-finite value), a malformed prior or malformed candidates.
        """
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"GradientInversionAttack: threat must be a ThreatModel, got {type(threat).__name__}.")
        with torch_threads(self.config.num_threads):
            return self._reconstruct(global_state, update, threat, prior, candidates)

    def matching_loss(self, global_state: Mapping, update: Mapping, threat: ThreatModel, images: Any, labels: Any) -> float:
        """The attack's matching loss (objective + ``bn_weight`` x BN term) of given images.

        The loss :meth:`reconstruct` minimises, without the image priors. In an audit, the value of
        the true images (about 0: they reproduce the update exactly) against ``stats["best_loss"]``
        of a reconstruction shows how far the optimisation stopped from the global minimum; the
        truth is only scored, never given to :meth:`reconstruct`.

        Args:
            global_state: the global model's state dict the server sent.
            update: ``new_state - global_state`` for every state-dict entry.
            threat: the client's training configuration.
            images: ``(num_images, C, H, W)`` images in [0, 1] (array or tensor).
            labels: ``(num_images,)`` integer labels of ``images``.

        Returns:
            The matching loss (lower = the images explain the update better).

        Raises:
            TypeError: if ``threat`` is not a :class:`ThreatModel` or a state is not a mapping.
            DataError: for a malformed update or global state, images of another shape or outside
                [0, 1], or labels that are not ``num_images`` class indices.
        """
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"GradientInversionAttack: threat must be a ThreatModel, got {type(threat).__name__}.")
        shape = (threat.num_images, threat.in_channels, threat.image_size, threat.image_size)
        image_tensor = _to_tensor(images, "images").float()
        if tuple(image_tensor.shape) != shape or not bool(torch.isfinite(image_tensor).all()):
            raise DataError(
                f"GradientInversionAttack.matching_loss: images must be finite with shape {shape}, got {tuple(image_tensor.shape)}."
            )
        if float(image_tensor.min()) < 0.0 or float(image_tensor.max()) > 1.0:
            raise DataError("GradientInversionAttack.matching_loss: images must be in [0, 1].")
        label_tensor = _to_tensor(labels, "labels").reshape(-1)
        if (
            label_tensor.is_floating_point()
            or tuple(label_tensor.shape) != (threat.num_images,)
            or bool((label_tensor < 0).any() | (label_tensor >= threat.num_classes).any())
        ):
            raise DataError(
                f"GradientInversionAttack.matching_loss: labels must be {threat.num_images} integers in [0, {threat.num_classes}), "
                f"got {label_tensor.tolist()}."
            )
        problem = self._set_up(global_state, update, threat, prior=None)
        loss, _, _ = self._matching_loss(
            image_tensor.to(problem.device), label_tensor.long().to(problem.device), problem.simulator, problem.target,
            problem.recovered, create_graph=False,
        )
        return float(loss.detach())

    def _set_up(self, global_state: Mapping, update: Mapping, threat: ThreatModel, prior: Any) -> _Problem:
        """Validate the inputs, recover BatchNorm statistics and labels, and build the replay.

        With several mini-batches per epoch the recovered labels are spread over them
        (:func:`nvflare_gia.attack.labels.spread_over_batches`): the replay feeds the dummies in
        index order, so their order fixes which labels each step sees.
        """
        model = build_model(threat.model, threat.num_classes, threat.in_channels)
        global_tensors, update_tensors = validate_update(model, global_state, update)
        model.load_state_dict(global_tensors)
        model.train()
        device = resolve_device(self.config.device)
        prior_tensor = _prepare_prior(prior, threat)

        momenta = bn_momenta(model, threat.bn_momentum)
        self._check_step_count(update_tensors, threat)
        recovered = recover_bn_statistics(global_tensors, update_tensors, momenta, threat.num_steps)
        label_info = recover_labels(
            model, global_tensors, update_tensors, threat,
            strategy=self.config.label_strategy, prior=prior_tensor, bn_statistics=recovered,
        )
        if label_info.labels is not None and len(threat.epoch_batch_sizes) > 1:
            label_info = dataclasses.replace(label_info, labels=spread_over_batches(label_info.labels, threat.epoch_batch_sizes))
        deep = layers_beyond_stride(model, threat.in_channels, threat.image_size, self.config.max_feature_stride)
        matched_params = [n for n, _ in model.named_parameters() if n.rpartition(".")[0] not in deep]
        if deep:
            outermost = sorted(n for n in deep if n.rpartition(".")[0] not in deep)
            logger.info("matching skips the layers downsampled by more than %d: %s", self.config.max_feature_stride, outermost)
        masks = read_dropout_masks(model, global_tensors, update_tensors, threat)
        if masks:
            logger.info("replaying the client's dropout masks read off the update: %s", {n: int((m > 0).sum()) for n, m in masks.items()})
        new_replay = functools.partial(
            LocalTrainingSimulator, model, threat, device=device, matched_params=matched_params, dropout_masks=masks
        )
        simulator = new_replay()
        return _Problem(
            simulator=simulator,
            new_replay=new_replay,
            target=[update_tensors[n].to(device, torch.float32) for n in simulator.matched_names],
            recovered={k: BNStatistics(v.mean.to(device), v.var.to(device)) for k, v in recovered.items() if k not in deep},
            label_info=label_info,
            prior=prior_tensor.to(device),
            device=device,
        )

    def _reconstruct(self, global_state: Mapping, update: Mapping, threat: ThreatModel, prior: Any, candidates: Any) -> AttackResult:
        cfg = self.config
        started = time.perf_counter()
        candidate_tensor = None if candidates is None else _prepare_candidates(candidates, threat)
        problem = self._set_up(global_state, update, threat, prior)
        shape = (threat.num_images, threat.in_channels, threat.image_size, threat.image_size)
        deadline = None if cfg.max_seconds is None else started + float(cfg.max_seconds)
        retrieval = None
        if candidate_tensor is not None:
            if threat.num_images == 1:
                problem.prior, retrieval = self._retrieve_prior(problem, candidate_tensor, started)
            else:
                logger.info("%d candidate images not used: retrieval ranks candidates for one attacked image only", len(candidate_tensor))
        simulator, target = problem.simulator, problem.target
        recovered_dev, label_info, prior_dev, device = problem.recovered, problem.label_info, problem.prior, problem.device
        prior_weight = cfg.prior_weight if prior is not None or retrieval is not None else 0.0
        planned = cfg.restarts
        if deadline is not None and planned > 1:
            seconds_per_iteration = self._calibrate(shape, simulator, target, recovered_dev, label_info, device)
            per_thread = int((deadline - time.perf_counter()) / (cfg.min_restart_iterations * seconds_per_iteration))
            planned = min(planned, max(per_thread, 1) * cfg.parallel_restarts)  # at least one per thread
            if planned < cfg.restarts:
                logger.info(
                    "%.1f ms per iteration: the time budget affords %d of %d restarts of %d iterations on %d thread(s)",
                    1000.0 * seconds_per_iteration, planned, cfg.restarts, cfg.min_restart_iterations, cfg.parallel_restarts,
                )
        threads = min(cfg.parallel_restarts, planned)

        def run_share(thread: int, replay: LocalTrainingSimulator) -> list[tuple[int, _RestartOutcome, float]]:
            """Restarts ``thread, thread + threads, ...`` one after another, with their optimisation seconds."""
            mine = list(range(thread, planned, threads))
            done = []
            for position, restart in enumerate(mine):
                now = time.perf_counter()
                if position > 0 and ((deadline is not None and now >= deadline) or self._stop_requested()):
                    logger.info("stopped after %d of %d restarts on thread %d (budget spent or stop requested)", position, len(mine), thread)
                    break
                restart_deadline = None if deadline is None else now + (deadline - now) / (len(mine) - position)
                outcome = self._run_restart(
                    restart, shape, replay, target, recovered_dev, label_info, prior_dev, prior_weight, restart_deadline, device
                )
                done.append((restart, outcome, time.perf_counter() - now))
            return done

        if threads == 1:
            shares = [run_share(0, simulator)]
        else:  # each thread replays on its own simulator: a replay holds per-call state
            replays = [simulator] + [problem.new_replay() for _ in range(threads - 1)]
            shares = _run_in_daemon_threads(run_share, replays)
        finished = sorted((entry for share in shares for entry in share), key=lambda entry: entry[0])
        outcomes = [outcome for _, outcome, _ in finished]
        iterations = sum(outcome.iterations for outcome in outcomes)
        optimise_seconds = sum(seconds for _, _, seconds in finished)
        best_restart = int(np.argmin([o.loss for o in outcomes]))
        images, soft, combined = self._combine(outcomes, best_restart, label_info)
        # The no-ground-truth residuals describe the best restart, i.e. how well some images explain
        # the update; a consensus mean is a better estimate of the images but explains it less well.
        best = outcomes[best_restart]
        _, update_residual, bn_residual = self._evaluate(
            best.images, self._labels_tensor(label_info, best.soft, device), simulator, target, recovered_dev
        )
        matching = self._evaluate(images, self._labels_tensor(label_info, soft, device), simulator, target, recovered_dev)[0]
        seconds = time.perf_counter() - started
        soft_np = None
        if soft is not None:
            soft_np = torch.softmax(soft, dim=1).cpu().numpy().astype(np.float32)
            labels_np = soft_np.argmax(axis=1).astype(np.int64)
        else:
            labels_np = np.asarray(label_info.labels, dtype=np.int64)
        stats = {
            "iterations": iterations,
            "seconds": seconds,
            "ms_per_iteration": 1000.0 * optimise_seconds / max(iterations, 1),
            "best_loss": outcomes[best_restart].loss,
            "returned_matching_loss": matching,
            "update_residual": update_residual,
            "bn_residual": bn_residual,
            "restart_losses": [o.loss for o in outcomes],
            "best_restart": best_restart,
            "restart_selection": cfg.restart_selection,
            "restarts_combined": combined,
            "label_method": label_info.method,
            "device": str(device),
            "stopped": self._stop_requested(),
        }
        if retrieval is not None:
            stats["retrieval"] = retrieval
        logger.info(
            "attack done: %d iterations in %.1f s (%.2f ms/it), best loss %.4g (restart %d of %d), %s matching loss %.4g, "
            "update residual %.3g, bn residual %.3g",
            iterations, seconds, stats["ms_per_iteration"], stats["best_loss"], best_restart + 1, len(outcomes),
            cfg.restart_selection, matching, update_residual, bn_residual,
        )
        out = images.detach().clamp(0.0, 1.0).cpu().numpy().astype(np.float32)
        return AttackResult(images=out, labels=labels_np, stats=stats, soft_labels=soft_np)

    def _retrieve_prior(self, problem: _Problem, candidates: torch.Tensor, started: float) -> tuple[torch.Tensor, dict[str, Any]]:
        """The mean of the ``retrieval_k`` candidates whose simulated updates fit the observed one best.

        Candidates are scored one by one by the objective alone (with the BN term the ranking was
        slightly worse: ``docs/benchmarks.md``), until all are scored or ``retrieval_share`` of
        ``max_seconds`` is spent; at least ``retrieval_k`` are always scored.
        """
        cfg = self.config
        objective = look_up_objective(cfg.objective)
        simulator, device = problem.simulator, problem.device
        if problem.label_info.labels is None:
            labels = torch.full((1, simulator.threat.num_classes), 1.0 / simulator.threat.num_classes, device=device)
        else:
            labels = torch.as_tensor(problem.label_info.labels, dtype=torch.long, device=device)
        stop = None if cfg.max_seconds is None else started + cfg.retrieval_share * float(cfg.max_seconds)
        scores: list[float] = []
        for index in range(len(candidates)):
            if stop is not None and index >= cfg.retrieval_k and time.perf_counter() >= stop:
                logger.info("retrieval: time share spent after %d of %d candidates", index, len(candidates))
                break
            sim = simulator.run(candidates[index : index + 1].to(device), labels, create_graph=False)
            value = objective([sim.update[n] for n in simulator.matched_names], problem.target)
            scores.append(float(value.detach()))
        chosen = np.argsort(np.asarray(scores), kind="stable")[: cfg.retrieval_k]
        logger.info(
            "retrieval: prior = mean of %d of %d ranked candidates (objective %.4g to %.4g)",
            len(chosen), len(scores), scores[chosen[0]], scores[chosen[-1]],
        )
        prior = candidates[torch.as_tensor(chosen)].mean(dim=0, keepdim=True).to(device)
        info = {"ranked": len(scores), "indices": chosen.tolist(), "objective": [scores[i] for i in chosen]}
        return prior, info

    @staticmethod
    def _check_step_count(update: Mapping[str, torch.Tensor], threat: ThreatModel) -> None:
        for key, value in update.items():
            if key.endswith("num_batches_tracked"):
                steps = round(float(value))
                if steps != threat.num_steps:
                    logger.warning(
                        "update[%r] = %d local steps but the threat model says %d; the simulation follows the threat model",
                        key, steps, threat.num_steps,
                    )
                return

    @staticmethod
    def _labels_tensor(label_info: LabelRecovery, soft: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        if soft is not None:
            return torch.softmax(soft.to(device), dim=1)
        return torch.as_tensor(label_info.labels, dtype=torch.long, device=device)

    def _calibrate(
        self, shape: tuple[int, ...], simulator: LocalTrainingSimulator, target: list[torch.Tensor],
        recovered: Mapping[str, BNStatistics], label_info: LabelRecovery, device: torch.device,
    ) -> float:
        """Seconds of one optimisation iteration, timed on the second of two iterations on random images."""
        images = torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_(True)
        if label_info.labels is None:
            labels = torch.full((shape[0], simulator.threat.num_classes), 1.0 / simulator.threat.num_classes, device=device)
        else:
            labels = torch.as_tensor(label_info.labels, dtype=torch.long, device=device)
        elapsed = 0.0
        for _ in range(2):
            started = time.perf_counter()
            loss, _, _ = self._matching_loss(images, labels, simulator, target, recovered, create_graph=True)
            torch.autograd.grad(loss + total_variation(images), [images])
            elapsed = time.perf_counter() - started
        return max(elapsed, 1e-6)

    def _matching_loss(
        self, images: torch.Tensor, labels: torch.Tensor, simulator: LocalTrainingSimulator, target: list[torch.Tensor],
        recovered: Mapping[str, BNStatistics], create_graph: bool,
    ):
        """Objective + bn_weight * BN matching on ``images``; also returns the simulated update's
        parameter tensors (in ``target``'s order) and the simulation."""
        sim = simulator.run(images, labels, create_graph=create_graph)
        simulated = [sim.update[n] for n in simulator.matched_names]
        matching = look_up_objective(self.config.objective)(simulated, target)
        if self.config.bn_weight:
            matching = matching + self.config.bn_weight * bn_matching_loss(sim.bn_statistics, recovered)
        return matching, simulated, sim

    def _evaluate(
        self, images: torch.Tensor, labels: torch.Tensor, simulator: LocalTrainingSimulator, target: list[torch.Tensor],
        recovered: Mapping[str, BNStatistics],
    ) -> tuple[float, float, float]:
        """Matching loss, relative update residual and relative BN residual of the returned images."""
        matching, simulated, sim = self._matching_loss(images, labels, simulator, target, recovered, create_graph=False)
        update_residual = math.sqrt(float(l2_objective(simulated, target)))  # create_graph=False: detached
        bn_err = sum(
            float((sim.bn_statistics[k].mean - v.mean).detach().pow(2).sum() + (sim.bn_statistics[k].var - v.var).detach().pow(2).sum())
            for k, v in recovered.items()
        )
        bn_ref = sum(float(v.mean.pow(2).sum() + v.var.pow(2).sum()) for v in recovered.values())
        bn_residual = math.sqrt(bn_err / bn_ref) if bn_ref > 0 else 0.0
        return float(matching.detach()), update_residual, bn_residual

    def _combine(
        self, outcomes: list[_RestartOutcome], best: int, label_info: LabelRecovery
    ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """The best restart, or the consensus of the good restarts aligned to the best one (and how many)."""
        reference = outcomes[best]
        outcomes = [o for o in outcomes if o.loss <= self.config.consensus_tolerance * reference.loss]
        if self.config.restart_selection == RestartSelection.BEST.value or len(outcomes) == 1:
            return reference.images, reference.soft, 1
        n = reference.images.shape[0]
        flat_ref = reference.images.reshape(n, -1)
        labels = None if label_info.labels is None else np.asarray(label_info.labels)
        images_sum = torch.zeros_like(reference.images)
        soft_sum = None if reference.soft is None else torch.zeros_like(reference.soft)
        for outcome in outcomes:
            flat = outcome.images.reshape(n, -1)
            cost = torch.cdist(flat_ref.double(), flat.double()).pow(2).cpu().numpy()
            if labels is not None:
                cost = cost + 1e12 * (labels[:, None] != labels[None, :])
            rows, cols = linear_sum_assignment(cost)
            order = torch.as_tensor(cols[np.argsort(rows)], device=outcome.images.device)
            images_sum += outcome.images[order]
            if soft_sum is not None and outcome.soft is not None:
                soft_sum += torch.softmax(outcome.soft[order], dim=1)
        images = images_sum / len(outcomes)
        soft = None if soft_sum is None else torch.log((soft_sum / len(outcomes)).clamp_min(1e-12))
        return images, soft, len(outcomes)

    def _to_images(self, z: torch.Tensor, size: int) -> torch.Tensor:
        x = torch.sigmoid(z) if self.config.parametrization == Parametrization.SIGMOID.value else z
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x

    def _to_variables(self, images: torch.Tensor, side: int) -> torch.Tensor:
        x = images.detach()
        if x.shape[-1] != side:
            x = F.interpolate(x, size=(side, side), mode="area")
        if self.config.parametrization == Parametrization.SIGMOID.value:
            x = torch.logit(x.clamp(0.01, 0.99))
        return x.clone().requires_grad_(True)

    def _initial_images(self, restart: int, shape: tuple[int, ...], prior: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        generator = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + restart)
        if cfg.init == InitName.PRIOR.value:
            x = prior.detach().cpu().expand(shape) + 0.1 * torch.randn(shape, generator=generator)
        else:
            x = torch.rand(shape, generator=generator)
        return x.clamp(0.01, 0.99)

    def _stage_sides(self, size: int) -> list[int]:
        return [max(size // factor, 1) for factor in self.config.scale_factors]

    def _run_restart(
        self,
        restart: int,
        shape: tuple[int, ...],
        simulator: LocalTrainingSimulator,
        target: list[torch.Tensor],
        recovered: Mapping[str, BNStatistics],
        label_info: LabelRecovery,
        prior: torch.Tensor,
        prior_weight: float,
        deadline: float | None,
        device: torch.device,
    ) -> _RestartOutcome:
        """One restart: coarse-to-fine stages, each with a fresh Adam and a cosine learning-rate decay.

        Progress through the restart is ``max(iteration / max_iterations, elapsed / budget)``; the
        stage is the one whose share of the budget holds the progress. A restart always takes at
        least one step, even when a loaded machine spent its budget before the first. The restart returns the
        images with the lowest matching loss seen in its last (full-resolution) stage.
        """
        cfg = self.config
        size = shape[-1]
        sides = self._stage_sides(size)
        bounds = np.cumsum(cfg.scale_fractions)
        bounds[-1] = 1.0
        images = self._initial_images(restart, shape, prior).to(device)
        stage = 0
        z = self._to_variables(images, sides[0])
        soft = None
        hard = None
        if label_info.labels is None:
            soft = torch.zeros(shape[0], simulator.threat.num_classes, device=device, requires_grad=True)
        else:
            hard = torch.as_tensor(label_info.labels, dtype=torch.long, device=device)
        variables = [z] if soft is None else [z, soft]
        optimizer = torch.optim.Adam(variables, lr=cfg.lr)
        start = time.perf_counter()
        budget = None if deadline is None else max(deadline - start, 1e-9)
        last_log = start
        best_loss = math.inf
        best_images = self._to_images(z, size).detach().clone()
        best_soft = None if soft is None else soft.detach().clone()
        iteration = 0
        last_stage = len(sides) - 1
        for iteration in range(cfg.max_iterations):
            now = time.perf_counter()
            if iteration > 0 and self._stop_requested():
                logger.info("restart %d: stop requested at iteration %d", restart, iteration)
                break
            progress = iteration / cfg.max_iterations
            if budget is not None:
                progress = max(progress, (now - start) / budget)
                if progress >= 1.0 and iteration > 0:  # every restart takes at least one step
                    break
            new_stage = int(np.searchsorted(bounds, progress, side="right"))
            new_stage = min(new_stage, last_stage)
            if new_stage != stage:
                current = self._to_images(z, size).detach()
                stage = new_stage
                z = self._to_variables(current, sides[stage])
                variables = [z] if soft is None else [z, soft]
                optimizer = torch.optim.Adam(variables, lr=cfg.lr)
            low = 0.0 if stage == 0 else float(bounds[stage - 1])
            local = min(max((progress - low) / max(float(bounds[stage]) - low, 1e-12), 0.0), 1.0)
            lr = cfg.lr * (cfg.lr_decay + (1.0 - cfg.lr_decay) * 0.5 * (1.0 + math.cos(math.pi * local)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = self._to_images(z, size)
            labels = hard if soft is None else torch.softmax(soft, dim=1)
            matching, _, _ = self._matching_loss(images, labels, simulator, target, recovered, create_graph=True)
            total = matching
            if cfg.tv_weight:
                total = total + cfg.tv_weight * total_variation(images)
            if prior_weight:
                total = total + prior_weight * prior_distance(images, prior)
            if cfg.range_weight and cfg.parametrization == Parametrization.PENALTY.value:
                total = total + cfg.range_weight * range_penalty(z)
            value = float(matching.detach())
            if not math.isfinite(value):
                logger.warning("restart %d: non-finite matching loss at iteration %d; stopping this restart", restart, iteration)
                break
            if stage == last_stage and value < best_loss:
                best_loss = value
                best_images = images.detach().clone()
                best_soft = None if soft is None else soft.detach().clone()
            grads = torch.autograd.grad(total, variables)
            for variable, grad in zip(variables, grads):
                variable.grad = grad
            optimizer.step()
            if cfg.parametrization == Parametrization.CLAMP.value:
                with torch.no_grad():
                    z.clamp_(0.0, 1.0)
            if now - last_log >= cfg.log_every:
                last_log = now
                left = "unbounded" if deadline is None else f"{max(deadline - now, 0.0):.1f} s"
                logger.info(
                    "restart %d/%d iteration %d (stage %d/%d, %d px): best matching loss %.5g, lr %.3g, time left %s",
                    restart + 1, cfg.restarts, iteration, stage + 1, len(sides), sides[stage], best_loss, lr, left,
                )
        else:
            iteration = cfg.max_iterations
        if not math.isfinite(best_loss):  # the last stage was never reached: score the last iterate
            best_images = self._to_images(z, size).detach().clone()
            best_soft = None if soft is None else soft.detach().clone()
            labels = hard if soft is None else torch.softmax(best_soft, dim=1)
            value, _, _ = self._matching_loss(best_images, labels, simulator, target, recovered, create_graph=False)
            best_loss = float(value.detach())
        if cfg.parametrization != Parametrization.SIGMOID.value:
            best_images = best_images.clamp(0.0, 1.0)
        logger.info("restart %d/%d finished after %d iterations: best matching loss %.5g", restart + 1, cfg.restarts, iteration, best_loss)
        return _RestartOutcome(loss=best_loss, images=best_images, soft=best_soft, iterations=iteration)


def _run_in_daemon_threads(function: Callable[[int, Any], Any], arguments: list[Any]) -> list[Any]:
    """``[function(i, argument) for i, argument in enumerate(arguments)]``, each call on its own daemon thread.

    Daemon threads, unlike a ``ThreadPoolExecutor``'s, do not hold up the interpreter's exit: a
    server that ends its run while an attack is in flight (the widget gives up on it at
    ``END_RUN``) exits at once instead of after the attack's budget.

    Raises:
        BaseException: the first error a call raised, after every call has returned.
    """
    results: list[Any] = [None] * len(arguments)
    errors: list[BaseException] = []

    def call(index: int) -> None:
        try:
            results[index] = function(index, arguments[index])
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    workers = [threading.Thread(target=call, args=(i,), name=f"gia-restart-{i}", daemon=True) for i in range(len(arguments))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return results


@dataclasses.dataclass
class _Problem:
    """One attack problem: the replay, the observed update and what was recovered from it."""

    simulator: LocalTrainingSimulator
    new_replay: Callable[[], LocalTrainingSimulator]  # another replay of the same round, for another thread
    target: list[torch.Tensor]  # the observed update's matched parameter tensors, in the simulator's order
    recovered: dict[str, BNStatistics]  # the statistics of the matched BatchNorm layers
    label_info: LabelRecovery
    prior: torch.Tensor
    device: torch.device


@dataclasses.dataclass
class _RestartOutcome:
    loss: float
    images: torch.Tensor
    soft: torch.Tensor | None
    iterations: int
