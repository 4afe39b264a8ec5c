"""Client self-audit: attack one's own outgoing update and score it against one's own images.

A client that holds its training images can measure, before sending, how much its (already
defended) update leaks to the honest-but-curious server of DESIGN.md: it runs the same attack
engine the server-side widget runs (:class:`nvflare_gia.attack.GradientInversionAttack`, same
defaults, same threat model built from what the server knows, and the widget's ``prior`` when it
is configured to match: ``val_retrieval`` in the jobs) against the cached global model, and
scores the reconstruction with the same leakage metrics
(:func:`nvflare_gia.metrics.evaluate_leakage`; Hungarian matching, SSIM, RDLV of Hatamizadeh et
al., IEEE TMI 2023). No nvflare import: the FLARE filters in
:mod:`nvflare_gia.flare.audit_filters` only adapt it.

Two uses:

* :class:`LeakageGate` — pass or block an update by a threshold on the leakage metric;
* :class:`nvflare_gia.defenses.calibrated.CalibratedDefense` — search the weakest defense
  strength whose audited leakage is at or under a target.

What a self-audit can and cannot promise: it is one run of the attack under a budget. A stronger
or longer attack (the server's, with more restarts or seconds, or a better prior) can leak more
than the audit measured; the audit is a lower bound on leakage, not a proof of privacy.
Budgets (``max_iterations``, ``max_seconds``, ``restarts``) trade that gap against client time.
With ``max_seconds=None`` the audit is deterministic on CPU for a fixed ``seed``.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from nvflare_gia.attack import (
    DEFAULT_MAX_IMAGES,
    PRIOR_NAMES,
    AttackConfig,
    DeviceName,
    GradientInversionAttack,
    ThreatModel,
    check_prior_name,
    prior_from_validation,
)
from nvflare_gia.audit import score_reconstruction, stopped_short
from nvflare_gia.defenses._checks import check_bool, check_int, check_number, look_up_option
from nvflare_gia.defenses._update import COUNTER_SUFFIX
from nvflare_gia.defenses.base import DefenseContext
from nvflare_gia.errors import DataError
from nvflare_gia.training import epoch_orders, num_local_steps

__all__ = [
    "AuditStatus",
    "LeakageMetric",
    "SelfAuditConfig",
    "SelfAuditResult",
    "SelfAudit",
    "LeakageGateConfig",
    "LeakageGate",
    "threat_from_context",
    "client_batch_order",
    "check_audit_options",
    "audits_with_confirmations",
    "audit_passes",
    "run_with_confirmations",
]

logger = logging.getLogger(__name__)


class LeakageMetric(str, enum.Enum):
    """Metric a self-audit compares with its threshold or target; for both, higher = more leakage.

    ``rdlv``: relative data leakage value (TMI 2023), ``(SSIM(recon) - SSIM(prior)) / SSIM(prior)``
    with the audit's prior (flat gray, or the validation mean); > 0 means the reconstruction tells
    more than the prior alone.
    ``ssim``: mean SSIM between matched reconstructions and true images, in [-1, 1].
    """

    RDLV = "rdlv"
    SSIM = "ssim"


class AuditStatus(str, enum.Enum):
    """``audited``: the attack ran and was scored. ``skipped``: not audited, and why is recorded."""

    AUDITED = "audited"
    SKIPPED = "skipped"


def check_audit_options(
    owner: str,
    *,
    metric: Any,
    max_images: Any,
    max_seconds: Any,
    max_iterations: Any,
    restarts: Any,
    seed: Any,
    device: Any,
    num_threads: Any,
    prior: Any,
    parallel_restarts: Any,
    seed_name: str = "seed",
) -> dict[str, Any]:
    """Validate the self-audit options (messages name the argument, its constraint and the value).

    Args:
        owner: class name for the messages.
        seed_name: the name under which ``seed`` is known to the caller (e.g. ``attack_seed``).

    Returns:
        The normalised values, keyed as :class:`SelfAuditConfig` fields.

    Raises:
        TypeError: for a wrong type.
        ConfigError: for a value out of range or an unknown option.
    """
    out = {
        "metric": look_up_option(owner, "metric", metric, LeakageMetric),
        "max_images": check_int(owner, "max_images", max_images, minimum=1),
        "max_seconds": None if max_seconds is None else check_number(owner, "max_seconds", max_seconds, low=0.0, low_open=True),
        "max_iterations": check_int(owner, "max_iterations", max_iterations, minimum=1),
        "restarts": check_int(owner, "restarts", restarts, minimum=1),
        "seed": check_int(owner, seed_name, seed, minimum=0),
        "device": look_up_option(owner, "device", device, DeviceName),
        "num_threads": check_int(owner, "num_threads", num_threads, minimum=1, allow_none=True),
        "prior": check_prior_name(owner, prior),
        "parallel_restarts": check_int(owner, "parallel_restarts", parallel_restarts, minimum=1),
    }
    return out


@dataclasses.dataclass(frozen=True)
class SelfAuditConfig:
    """Configuration of :class:`SelfAudit`: the metric and the attack's budget.

    The attack's other settings are :class:`nvflare_gia.attack.AttackConfig`'s defaults, so the
    self-audit runs the attack the server-side widget runs.

    Args:
        metric: ``rdlv`` or ``ssim`` (see :class:`LeakageMetric`).
        max_images: updates of clients that trained on more images are not audited (status
            ``skipped``); the default is the widget's, ``nvflare_gia.attack.DEFAULT_MAX_IMAGES``.
        max_seconds: wall-clock budget of one audit's attack (``AttackConfig.max_seconds``);
            None = iterations only (deterministic on CPU).
        max_iterations: iterations per restart (``AttackConfig.max_iterations``).
        restarts: attack restarts (``AttackConfig.restarts``).
        seed: attack seed (``AttackConfig.seed``); it seeds the attacker's initialisation, not
            any noise, so fixing it discloses nothing.
        device: ``auto``, ``cpu`` or ``cuda`` (``AttackConfig.device``).
        num_threads: torch threads of the attack (``AttackConfig.num_threads``).
        prior: the attacker's prior knowledge, a name of ``nvflare_gia.attack.PRIOR_NAMES``:
            ``flat`` (gray 0.5), ``val_mean`` or ``val_retrieval`` (from the public validation
            images given to :meth:`SelfAudit.run`). Set it to the server widget's ``prior`` so
            that the audit runs the server's attack; RDLV is measured against this prior.
        parallel_restarts: restarts run side by side, each on its own thread
            (``AttackConfig.parallel_restarts``): on a client whose cores are free while it audits.

    Raises:
        TypeError, ConfigError: for an invalid value.

    Example:
        >>> SelfAuditConfig(max_iterations=100, max_seconds=None).attack_config().max_iterations
        100
    """

    metric: str = LeakageMetric.RDLV.value
    max_images: int = DEFAULT_MAX_IMAGES
    max_seconds: float | None = AttackConfig.max_seconds
    max_iterations: int = AttackConfig.max_iterations
    restarts: int = AttackConfig.restarts
    seed: int = AttackConfig.seed
    device: str = AttackConfig.device
    num_threads: int | None = AttackConfig.num_threads
    prior: str = PRIOR_NAMES[0]
    parallel_restarts: int = AttackConfig.parallel_restarts

    def __post_init__(self) -> None:
        values = check_audit_options(type(self).__name__, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def attack_config(self) -> AttackConfig:
        """The attack's configuration: these budgets, every other field at its ``AttackConfig`` default."""
        return AttackConfig(
            max_seconds=self.max_seconds,
            max_iterations=self.max_iterations,
            restarts=self.restarts,
            seed=self.seed,
            device=self.device,
            num_threads=self.num_threads,
            parallel_restarts=self.parallel_restarts,
            init="noise" if self.prior == "flat" else "prior",
        )


@dataclasses.dataclass(frozen=True)
class SelfAuditResult:
    """Outcome of one self-audit.

    Attributes:
        status: ``audited`` or ``skipped`` (see :class:`AuditStatus`).
        metric: the metric's name.
        value: the metric's value (None when skipped); higher = more leakage.
        seconds: wall-clock time of the audit.
        reason: why it was skipped ("" when audited).
        metrics: every ``gia/<metric>`` the audit computed (SSIM, PSNR, RDLV, residuals, the
            matching loss of the reconstruction and of the true images, ...).
        lower_bound: the true images fit the update at least
            :data:`nvflare_gia.audit.STOPPED_SHORT_FACTOR` times better than the reconstruction:
            the attack stopped short, so ``value`` underestimates what a stronger attack recovers.
    """

    status: str
    metric: str
    value: float | None
    seconds: float
    reason: str = ""
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    lower_bound: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (what the filters write into the DXO meta)."""
        out: dict[str, Any] = {
            "status": self.status, "metric": self.metric, "value": self.value, "seconds": self.seconds, "lower_bound": self.lower_bound,
        }
        if self.reason:
            out["reason"] = self.reason
        if "gia/attack_iterations" in self.metrics:
            out["attack_iterations"] = int(self.metrics["gia/attack_iterations"])
        return out


def threat_from_context(context: DefenseContext) -> ThreatModel:
    """What the server knows about this client's round, built from the defense context.

    Equal to ``ThreatModel.from_meta(meta)`` for a client that reports its hyperparameters
    truthfully (``nvflare_gia.flare.client_train`` does); ``DefenseContext.from_training_meta``
    has already checked the meta against the site's data.

    Raises:
        DataError: if the context lacks the client's data or training configuration.
    """
    context.require_data("threat_from_context")
    images = np.asarray(context.images)
    return ThreatModel(
        model=context.model,
        num_classes=context.num_classes,
        in_channels=int(images.shape[1]),
        image_size=int(images.shape[-1]),
        training=context.training,
        batch_size=context.batch_size,
        num_images=int(images.shape[0]),
    )


def client_batch_order(context: DefenseContext) -> np.ndarray:
    """The order in which the client's first epoch visits its images, drawn as
    :func:`nvflare_gia.training.train_local` draws it (the context's training seed and round).

    The audit scores the true images' matching loss in this order (see :meth:`SelfAudit.run`); the
    attack never sees it. A client that shuffles some other way gets the truth scored in the wrong
    batches, which raises its loss and so flags fewer lower bounds.

    Raises:
        DataError: if the context lacks the client's data or training configuration.
    """
    context.require_data("client_batch_order")
    return epoch_orders(len(context.images), context.training, context.round_index or 0)[0].numpy()


def _check_local_steps(update: Mapping[str, Any], threat: ThreatModel) -> None:
    """The update's BatchNorm step counters must equal the steps the threat model's round takes.

    Otherwise the reported training configuration (e.g. ``local_epochs``) is not the one the
    client ran, and an audit of the wrong round would say nothing about this update.

    Raises:
        DataError: naming the counter, the steps it records and the steps expected.
    """
    expected = num_local_steps(threat.num_images, threat.batch_size, threat.training.local_epochs)
    for key, value in update.items():
        if not str(key).endswith(COUNTER_SUFFIX):
            continue
        counted = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64).reshape(-1)
        if counted.size != 1 or not np.isfinite(counted).all() or round(float(counted[0])) != expected:
            raise DataError(
                f"SelfAudit: update[{key!r}] records {counted.tolist()} local steps but the reported round "
                f"({threat.num_images} images, batch {threat.batch_size}, {threat.training.local_epochs} epochs) takes "
                f"{expected}; the training meta does not describe this update."
            )


class SelfAudit:
    """Run the gradient inversion attack on one's own update and score it against one's own images.

    Args:
        config: the configuration; None uses the :class:`SelfAuditConfig` defaults.

    Raises:
        TypeError: if ``config`` is not a ``SelfAuditConfig``.

    Example:
        >>> SelfAudit(SelfAuditConfig(metric="ssim")).config.metric
        'ssim'
    """

    def __init__(self, config: SelfAuditConfig | None = None) -> None:
        config = SelfAuditConfig() if config is None else config
        if not isinstance(config, SelfAuditConfig):
            raise TypeError(f"SelfAudit: config must be a SelfAuditConfig, got {type(config).__name__}.")
        self.config = config

    def run(
        self,
        global_state: Mapping[str, Any],
        update: Mapping[str, Any],
        threat: ThreatModel,
        images: Any,
        labels: Any,
        val_images: Any = None,
        batch_order: Any = None,
    ) -> SelfAuditResult:
        """Attack ``update`` (``WEIGHT_DIFF`` from ``global_state``) and score it against ``images``.

        Args:
            global_state: the global model the client trained from.
            update: the update as it would be sent (after the defenses).
            threat: the client's round as the server knows it.
            images: the client's training images ``(N, C, H, W)`` in [0, 1], N = ``threat.num_images``.
            labels: their labels ``(N,)``.
            val_images: public validation images ``(M, C, H, W)`` in [0, 1], the source of a
                ``val_mean`` or ``val_retrieval`` prior (unused for ``flat``).
            batch_order: the order in which the client's first epoch visited ``images`` (see
                :func:`nvflare_gia.training.epoch_orders`), to score the true images in the
                client's batches; None = their own order (exact for a one-step round).

        Returns:
            The :class:`SelfAuditResult` (``skipped`` when ``threat.num_images > max_images``).

        Raises:
            TypeError: for a wrong argument type.
            DataError: if the images do not match the threat model, the update is malformed,
                the prior needs ``val_images`` that are missing or malformed, ``batch_order`` is
                not a permutation of the images, or the metric is not finite.
        """
        started = time.perf_counter()
        cfg = self.config
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"SelfAudit: threat must be a ThreatModel, got {type(threat).__name__}.")
        if threat.num_images > cfg.max_images:
            return SelfAuditResult(
                status=AuditStatus.SKIPPED.value,
                metric=cfg.metric,
                value=None,
                seconds=time.perf_counter() - started,
                reason=f"{threat.num_images} local images > max_images={cfg.max_images}",
            )
        truth = np.asarray(images, dtype=np.float32)
        truth_labels = np.asarray(labels).reshape(-1)
        expected = (threat.num_images, threat.in_channels, threat.image_size, threat.image_size)
        if truth.shape != expected or len(truth_labels) != threat.num_images:
            raise DataError(
                f"SelfAudit: the client's images must be {expected} with one label each (the threat model's round), "
                f"got images {truth.shape} and {len(truth_labels)} labels."
            )
        _check_local_steps(update, threat)
        order = np.arange(threat.num_images) if batch_order is None else np.asarray(batch_order).reshape(-1)
        if sorted(order.tolist()) != list(range(threat.num_images)):
            raise DataError(f"SelfAudit: batch_order must be a permutation of range({threat.num_images}), got {order.tolist()}.")
        prior, candidates = prior_from_validation(cfg.prior, self._public_images(val_images, expected[1:]))
        attack = GradientInversionAttack(cfg.attack_config())
        result = attack.reconstruct(global_state, update, threat, prior=prior, candidates=candidates)
        report = score_reconstruction(result, truth, truth_labels, prior=prior)
        metrics = {**result.to_dict(), **report.to_dict()}
        metrics["gia/truth_matching_loss"] = attack.matching_loss(global_state, update, threat, truth[order], truth_labels[order])
        value = metrics.get(f"gia/{cfg.metric}")
        if value is None or not math.isfinite(float(value)):
            raise DataError(f"SelfAudit: the attack gave no finite {cfg.metric} ({value!r}); the update cannot be audited.")
        seconds = time.perf_counter() - started
        logger.info("self-audit: %s = %.4f after %d attack iterations in %.2f s", cfg.metric, float(value), int(result.stats["iterations"]), seconds)
        return SelfAuditResult(
            status=AuditStatus.AUDITED.value,
            metric=cfg.metric,
            value=float(value),
            seconds=seconds,
            metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            lower_bound=stopped_short(metrics["gia/matching_loss"], metrics["gia/truth_matching_loss"]),
        )


    def _public_images(self, val_images: Any, image_shape: tuple[int, ...]) -> np.ndarray | None:
        """``val_images`` as float32 ``(M, C, H, W)``, checked when the prior needs them."""
        if self.config.prior == "flat":
            return None
        if val_images is None:
            raise DataError(
                f"SelfAudit: prior={self.config.prior!r} needs val_images (the data spec's validation split); none were given."
            )
        public = np.asarray(val_images, dtype=np.float32)
        if public.ndim != 4 or public.shape[0] == 0 or public.shape[1:] != image_shape or not np.isfinite(public).all():
            raise DataError(f"SelfAudit: val_images must be finite with shape (M, {', '.join(map(str, image_shape))}), got {public.shape}.")
        return public


def audits_with_confirmations(first: SelfAuditConfig, confirmations: int) -> list[SelfAudit]:
    """The first audit and ``confirmations`` confirmations: the same budget, attack seeds
    ``first.seed + 1``, ``first.seed + 2``, ... (the one rule for the gate and the calibrated defenses).
    """
    return [SelfAudit(dataclasses.replace(first, seed=first.seed + index)) for index in range(1 + confirmations)]


def audit_passes(value: float | None, lower_bound: bool, threshold: float, block_lower_bound: bool) -> bool:
    """The audit's pass rule, shared by the gate, its confirmations and the calibration.

    Args:
        value: the audited metric (the largest over confirmations); ``None`` when no audit scored.
        lower_bound: whether any audit's value is only a lower bound (:attr:`SelfAuditResult.lower_bound`).
        threshold: the largest value that passes.
        block_lower_bound: whether a lower bound fails even when its value passes.

    Returns:
        ``True`` when the value is ``None`` or at most ``threshold``, and, with ``block_lower_bound``,
        it is not a lower bound.
    """
    return (value is None or value <= threshold) and not (block_lower_bound and lower_bound)


def run_with_confirmations(
    audits: Sequence[SelfAudit],
    threshold: float,
    global_state: Mapping[str, Any],
    update: Mapping[str, Any],
    threat: ThreatModel,
    images: Any,
    labels: Any,
    val_images: Any = None,
    batch_order: Any = None,
    block_lower_bound: bool = False,
) -> list[SelfAuditResult]:
    """Run ``audits[0]``, then each further audit (a confirmation) while every value so far is at
    or under ``threshold`` (and, with ``block_lower_bound``, none is a lower bound).

    One short audit can pass an update that a longer attack, or the same attack from another seed,
    still inverts (on PneumoniaMNIST one passed at RDLV -0.43 where the server reached +2.5), so a
    pass counts only once the confirmations agree. A skipped audit ends the sequence.

    Args:
        audits: the first audit and its confirmations (usually the same budget, other attack seeds).
        threshold: the largest value that passes.
        global_state, update, threat, images, labels, val_images, batch_order: see :meth:`SelfAudit.run`.
        block_lower_bound: a result that is a lower bound (:attr:`SelfAuditResult.lower_bound`)
            fails too, so no confirmation is run after it.

    Returns:
        The results in order: all of them when every value passes, else up to the first that fails.

    Raises:
        DataError, TypeError: when an audit cannot run (see :meth:`SelfAudit.run`).
    """
    results: list[SelfAuditResult] = []
    for audit in audits:
        result = audit.run(global_state, update, threat, images, labels, val_images, batch_order)
        results.append(result)
        if result.value is None or not audit_passes(result.value, result.lower_bound, threshold, block_lower_bound):
            break
    return results


@dataclasses.dataclass(frozen=True)
class LeakageGateConfig:
    """Configuration of :class:`LeakageGate`.

    Args:
        metric: see :class:`SelfAuditConfig`.
        threshold: the update passes when the audited metric is at or under it (finite; for
            ``rdlv`` 0 means "no more than the attacker's prior").
        every_n_rounds: audit the 1st, (n+1)-th, (2n+1)-th, ... update this gate checks (>= 1);
            the others pass, recorded as skipped. The gate counts the updates itself: a server
            that numbered its rounds to dodge the audits could otherwise make every update pass.
        confirmations: further audits, with attack seeds ``seed + 1, ...``, that an update whose
            first audit passes must pass too (>= 0; see :func:`run_with_confirmations`); the
            decision uses the largest value.
        block_lower_bound: also block an update whose value passes but is only a lower bound
            (:attr:`SelfAuditResult.lower_bound`: the true images fit the update far better than
            the reconstruction, so the audit cannot vouch for it; e.g. an undefended update the
            attack failed to invert). A defended update the truth no longer fits better passes.
        max_images, max_seconds, max_iterations, restarts, seed, device, num_threads, prior,
            parallel_restarts: see :class:`SelfAuditConfig`.

    Raises:
        TypeError, ConfigError: for an invalid value.

    Example:
        >>> LeakageGateConfig(threshold=0.1).audit_config().metric
        'rdlv'
    """

    metric: str = SelfAuditConfig.metric
    threshold: float = 0.0
    every_n_rounds: int = 1
    confirmations: int = 1
    block_lower_bound: bool = True
    max_images: int = SelfAuditConfig.max_images
    max_seconds: float | None = SelfAuditConfig.max_seconds
    max_iterations: int = SelfAuditConfig.max_iterations
    restarts: int = SelfAuditConfig.restarts
    seed: int = SelfAuditConfig.seed
    device: str = SelfAuditConfig.device
    num_threads: int | None = SelfAuditConfig.num_threads
    prior: str = SelfAuditConfig.prior
    parallel_restarts: int = SelfAuditConfig.parallel_restarts

    def __post_init__(self) -> None:
        owner = type(self).__name__
        audit_fields = [f.name for f in dataclasses.fields(SelfAuditConfig)]
        for name, value in check_audit_options(owner, **{n: getattr(self, n) for n in audit_fields}).items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "threshold", check_number(owner, "threshold", self.threshold, low=-math.inf))
        object.__setattr__(self, "every_n_rounds", check_int(owner, "every_n_rounds", self.every_n_rounds, minimum=1))
        object.__setattr__(self, "confirmations", check_int(owner, "confirmations", self.confirmations, minimum=0))
        object.__setattr__(self, "block_lower_bound", check_bool(owner, "block_lower_bound", self.block_lower_bound))

    def audit_config(self) -> SelfAuditConfig:
        """The :class:`SelfAuditConfig` of the first audit (confirmations: :func:`audits_with_confirmations`)."""
        return SelfAuditConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SelfAuditConfig)})


class LeakageGate:
    """Decide whether an update may leave the client: audit it and compare with a threshold.

    Args:
        config: the configuration; None uses the :class:`LeakageGateConfig` defaults.

    Raises:
        TypeError: if ``config`` is not a ``LeakageGateConfig``.

    Example:
        >>> gate = LeakageGate(LeakageGateConfig(every_n_rounds=2))
        >>> [gate.take_turn() for _ in range(5)]
        [True, False, True, False, True]
    """

    def __init__(self, config: LeakageGateConfig | None = None) -> None:
        config = LeakageGateConfig() if config is None else config
        if not isinstance(config, LeakageGateConfig):
            raise TypeError(f"LeakageGate: config must be a LeakageGateConfig, got {type(config).__name__}.")
        self.config = config
        self._audits = audits_with_confirmations(config.audit_config(), config.confirmations)
        self._turns = 0

    def reset(self) -> None:
        """Start counting updates from scratch (a new run): the next update is audited."""
        self._turns = 0

    def take_turn(self) -> bool:
        """Count one more update; return whether it is due for an audit (see ``every_n_rounds``)."""
        due = self._turns % self.config.every_n_rounds == 0
        self._turns += 1
        return due

    def audit(
        self,
        global_state: Mapping[str, Any],
        update: Mapping[str, Any],
        threat: ThreatModel,
        images: Any,
        labels: Any,
        *,
        round_index: int | None = None,
        val_images: Any = None,
        batch_order: Any = None,
    ) -> dict[str, Any]:
        """Audit the update and return the decision (call :meth:`take_turn` first: every update
        counts, and one that is not due gets :meth:`skip` instead).

        Args:
            global_state, update, threat, images, labels, val_images, batch_order: see :meth:`SelfAudit.run`.
            round_index: the server's round number, only recorded (never used to decide).

        Returns:
            ``{"metric", "prior", "value", "threshold", "passed", "lower_bound", "seconds", "round", "status"}`` plus
            ``attack_iterations`` and ``audits`` (the value of each audit run, first audit then
            confirmations); ``value`` is the largest of ``audits``, ``seconds`` their sum.

        Raises:
            DataError, TypeError: when the audit cannot run (see :meth:`SelfAudit.run`).
        """
        results = run_with_confirmations(
            self._audits, self.config.threshold, global_state, update, threat, images, labels, val_images, batch_order,
            block_lower_bound=self.config.block_lower_bound,
        )
        return self._decide(results, round_index)

    def skip(self, round_index: int | None) -> dict[str, Any]:
        """The decision for an update that is not due for an audit: it passes, recorded as skipped
        (with a ``reason``), in the format of :meth:`audit`."""
        cfg = self.config
        result = SelfAuditResult(
            status=AuditStatus.SKIPPED.value, metric=cfg.metric, value=None, seconds=0.0,
            reason=f"not this update's turn: every_n_rounds={cfg.every_n_rounds} audits one update in {cfg.every_n_rounds}",
        )
        return self._decide([result], round_index)

    def _decide(self, results: Sequence[SelfAuditResult], round_index: int | None) -> dict[str, Any]:
        values = [r.value for r in results if r.value is not None]
        worst = max(results, key=lambda r: -math.inf if r.value is None else r.value)
        lower_bound = any(r.lower_bound for r in results)
        passed = audit_passes(worst.value, lower_bound, self.config.threshold, self.config.block_lower_bound)
        record = {**worst.to_dict(), "lower_bound": lower_bound, "seconds": sum(r.seconds for r in results)}
        if values:
            record["audits"] = values
        return {**record, "prior": self.config.prior, "threshold": self.config.threshold, "passed": bool(passed), "round": round_index}
