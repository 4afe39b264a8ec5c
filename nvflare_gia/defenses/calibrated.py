"""A noise defense whose strength is calibrated every round to a leakage target by a self-audit.

:class:`CalibratedDefense` wraps one defense of this package (``gaussian`` → ``sigma0``,
``laplacian`` → ``b``, ``shadow`` → ``budget``, ``latent`` → ``epsilon``) and, for each update,
searches the weakest strength whose self-audited leakage (:class:`nvflare_gia.defenses.self_audit.SelfAudit`:
the server's attack run by the client on its own defended update, scored against its own images)
is at or under ``target - margin``.

**Why a margin**: ``target`` is the leakage the *server's* attack may reach, but the self-audit
is a shorter attack (a per-round budget shared by every rung), and the ladder stops at the first
rung whose one noisy audit passes, which favours audits that came out low. Both make the audit
underestimate the server. On the benchmark (64×64 chest X-ray, high-risk site, calibrated
Gaussian, audits of 300 iterations and 1 restart, server attack 30 s and 5 restarts, 4 rounds)
the server's RDLV exceeded the passing audit's by −0.02, +0.13, +0.23 and +0.27; the default
``margin`` of 0.3 covers the largest gap measured. The update that was audited is the update that is sent: no noise is
redrawn after the audit.

**Confirmation**: a rung whose audit passes is audited ``confirmations`` more times with other
attack seeds (``attack_seed + 1``, ...) and is chosen only if every audit passes; its recorded
value is the largest. A single short audit of a noised update scatters widely: on PneumoniaMNIST
(28×28, bench self-audit of 300 iterations, 1 restart, shadow defense) a budget of 0.1 passed one
audit at RDLV −0.43 while the server's attack on the same update then reached SSIM 0.30, RDLV +2.5
(the undefended update: 0.40). Requiring two independent passes makes such a false pass rarer at the
cost of one more audit on the rung that is chosen.

**Lower bounds**: with ``block_lower_bound`` (the default, as for the gate) a rung whose audits
pass but one of them is only a lower bound (:attr:`nvflare_gia.defenses.self_audit.SelfAuditResult.lower_bound`:
the true images fit the defended update at least twice as well as the audit's reconstruction, so
the attack stopped short of what the update gives away) does not pass: the search goes on to a
stronger rung, whose noise the truth no longer fits. The truth is scored in the client's own
batches (:func:`nvflare_gia.defenses.self_audit.client_batch_order`).

**Search: a geometric ladder, weakest first** — strengths ``min_strength · ladder_factor^k``
(the last rung is ``max_strength`` itself), tried in increasing order, stopping at the first one
that meets the target. Why a ladder and not a bisection in log space: the audited leakage is not
monotone in the strength (one attack run per strength, with its own noise draw; on the benchmark,
64×64 chest X-ray, batch 1, 300 iterations, RDLV went 0.31 → 0.52 → 0.44 → 0.33 → 0.14 → −0.20
for Gaussian ``sigma0`` = 0, 0.3, 1, 3, 10, 30). A bisection assumes monotonicity: it may settle
between a failing and a passing strength without having audited the one it applies, or skip the
weakest passing rung. The ladder only ever applies a strength it audited, its answer is the
weakest passing rung, and for fixed audits the chosen strength can only grow when the target is
lowered. It costs up to ``ceil(log(max/min) / log(factor)) + 1`` audits instead of about
``log2`` of that; ``ladder_factor`` trades resolution for time.

All rungs of one call draw their noise from the same seed (common random numbers: for the Gaussian
and Laplacian defenses the noise is the same draw scaled by the strength), which makes the
leakage-versus-strength curve smoother; with ``seed=None`` that seed is fresh OS entropy per call.

**Fails closed**: it raises :class:`CalibrationError` (a ``DataError``) when no rung up to
``max_strength`` meets the target or ``total_seconds`` runs out before one does, and
``DataError`` when the audit cannot run (malformed update, data that does not match the threat
model). A rung whose defense cannot be applied (the wrapped defense raises ``DataError``, e.g. the
latent perturbation when no shift keeps the task loss within its bound) is recorded with its error
and the search goes on to the next one; the update is sent only at a rung that was applied and
audited. Clients that trained on more than ``max_images`` images are not audited (the attack's
cost grows with the local dataset, and such updates leak least): they get ``min_strength`` and
the record says ``skipped``.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from nvflare_gia.defenses._checks import check_bool, check_int, check_number, check_seed, look_up_option
from nvflare_gia.defenses._noise import context_round
from nvflare_gia.defenses._update import validate_update
from nvflare_gia.defenses.base import Defense, DefenseContext, DefenseOutcome
from nvflare_gia.defenses.self_audit import (
    AuditStatus,
    LeakageGateConfig,
    SelfAuditConfig,
    audit_passes,
    audits_with_confirmations,
    check_audit_options,
    client_batch_order,
    run_with_confirmations,
    threat_from_context,
)
from nvflare_gia.errors import ConfigError, DataError

__all__ = [
    "CALIBRATION_PARAM",
    "CalibratedDefenseName",
    "CalibrationError",
    "STRENGTHS",
    "CalibratedDefenseConfig",
    "CalibratedDefense",
    "strength_ladder",
]

logger = logging.getLogger(__name__)

#: key of the calibration record in :attr:`DefenseOutcome.params` (the wrapped defense's own
#: params keep their keys; ``GaussianNoise`` has a ``calibration`` of its percentile)
CALIBRATION_PARAM = "gia_calibration"


class CalibrationError(DataError):
    """No strength up to ``max_strength`` met the target, or the time budget ran out first: the
    update must not be sent (the FLARE filter blocks it; the benchmark leaves it out of the round)."""


class CalibratedDefenseName(str, enum.Enum):
    """The defenses :class:`CalibratedDefense` can wrap."""

    GAUSSIAN = "gaussian"
    LAPLACIAN = "laplacian"
    SHADOW = "shadow"
    LATENT = "latent"


@dataclasses.dataclass(frozen=True)
class _Strength:
    module: str
    defense: str
    config: str
    field: str
    low: float
    high: float


#: defense name -> (core class, config class, strength field, default min and max strength).
#: Defaults: the weakest end is at or below each defense's own default; the strongest end is where
#: the benchmark's high-risk update stopped leaking in a 300-iteration audit, with room above.
STRENGTHS: dict[str, _Strength] = {
    "gaussian": _Strength("nvflare_gia.defenses.gaussian", "GaussianNoise", "GaussianNoiseConfig", "sigma0", 0.1, 400.0),
    "laplacian": _Strength("nvflare_gia.defenses.laplacian", "LaplacianNoise", "LaplacianNoiseConfig", "b", 1e-4, 0.1),
    "shadow": _Strength("nvflare_gia.defenses.shadow", "ShadowModelDefense", "ShadowModelConfig", "budget", 0.1, 64.0),
    "latent": _Strength("nvflare_gia.defenses.latent", "LatentPerturbation", "LatentPerturbationConfig", "epsilon", 0.1, 3.0),
}


def strength_ladder(min_strength: float, max_strength: float, ladder_factor: float) -> tuple[float, ...]:
    """``min, min·f, min·f², ...`` below ``max``, then ``max`` itself.

    Example:
        >>> strength_ladder(1.0, 10.0, 3.0)
        (1.0, 3.0, 9.0, 10.0)
    """
    rungs = []
    value = float(min_strength)
    while value < max_strength * (1.0 - 1e-9):
        rungs.append(value)
        value *= ladder_factor
    rungs.append(float(max_strength))
    return tuple(rungs)


@dataclasses.dataclass(frozen=True)
class CalibratedDefenseConfig:
    """Configuration of :class:`CalibratedDefense`.

    Args:
        defense: the wrapped defense, ``gaussian``, ``laplacian``, ``shadow`` or ``latent``
            (see :data:`STRENGTHS` for the strength each one searches). Its other settings are
            its config's defaults.
        target: the leakage ``metric`` the server's attack may reach on the sent update (finite).
        margin: the audited ``metric`` must be at or under ``target - margin`` (>= 0), since the
            self-audit underestimates the server's attack (see the module docstring).
        metric: ``rdlv`` or ``ssim`` (see :class:`nvflare_gia.defenses.self_audit.LeakageMetric`).
        min_strength: weakest strength tried (> 0); None = the defense's default in :data:`STRENGTHS`.
        max_strength: strongest strength tried (> ``min_strength``); None = the default in
            :data:`STRENGTHS`. If it does not meet the target, the update is blocked.
        ladder_factor: ratio between consecutive strengths (> 1).
        confirmations: further audits, with attack seeds ``attack_seed + 1, ...``, that a passing
            rung must also pass (>= 0; 0 = one audit per rung). See the module docstring.
        block_lower_bound: a rung does not pass when one of its audits is only a lower bound (see
            the module docstring and :class:`~nvflare_gia.defenses.self_audit.LeakageGateConfig`).
        total_seconds: wall-clock budget of the search per update (> 0; None = unbounded): no new
            try starts after it; a try that has started runs with its full attack budget (a
            shortened attack would be weaker and pass more easily), so a call can take up to
            ``total_seconds`` plus one try.
        max_images: see :class:`SelfAuditConfig`.
        max_seconds: attack budget of one audit (see :class:`SelfAuditConfig`).
        max_iterations: see :class:`SelfAuditConfig`.
        restarts: see :class:`SelfAuditConfig`.
        attack_seed: the audit attack's seed (``SelfAuditConfig.seed``).
        device: see :class:`SelfAuditConfig`.
        num_threads: see :class:`SelfAuditConfig`.
        parallel_restarts: see :class:`SelfAuditConfig`.
        prior: the audit attack's prior (see :class:`SelfAuditConfig`); ``val_mean`` and
            ``val_retrieval`` need the context's ``val_images``.
        seed: seed of the defense's noise (>= 0). None (the default) draws fresh OS entropy every
            call; a seed written in the job configuration is known to the server: tests only.

    Raises:
        TypeError, ConfigError: for an invalid value.

    Example:
        >>> CalibratedDefenseConfig(defense="gaussian", min_strength=1.0, max_strength=8.0).strengths()
        (1.0, 2.0, 4.0, 8.0)
    """

    defense: str = CalibratedDefenseName.GAUSSIAN.value
    target: float = 0.0
    margin: float = 0.3
    metric: str = SelfAuditConfig.metric
    min_strength: float | None = None
    max_strength: float | None = None
    ladder_factor: float = 2.0
    confirmations: int = 1
    block_lower_bound: bool = LeakageGateConfig.block_lower_bound
    total_seconds: float | None = 600.0
    max_images: int = SelfAuditConfig.max_images
    max_seconds: float | None = SelfAuditConfig.max_seconds
    max_iterations: int = SelfAuditConfig.max_iterations
    restarts: int = SelfAuditConfig.restarts
    attack_seed: int = SelfAuditConfig.seed
    device: str = SelfAuditConfig.device
    num_threads: int | None = SelfAuditConfig.num_threads
    parallel_restarts: int = SelfAuditConfig.parallel_restarts
    prior: str = SelfAuditConfig.prior
    seed: int | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "defense", look_up_option(owner, "defense", self.defense, CalibratedDefenseName))
        object.__setattr__(self, "target", check_number(owner, "target", self.target, low=-math.inf))
        object.__setattr__(self, "margin", check_number(owner, "margin", self.margin, low=0.0))
        audit = check_audit_options(
            owner, metric=self.metric, max_images=self.max_images, max_seconds=self.max_seconds,
            max_iterations=self.max_iterations, restarts=self.restarts, seed=self.attack_seed, device=self.device,
            num_threads=self.num_threads, prior=self.prior, parallel_restarts=self.parallel_restarts, seed_name="attack_seed",
        )
        audit["attack_seed"] = audit.pop("seed")
        for name, value in audit.items():
            object.__setattr__(self, name, value)
        for name in ("min_strength", "max_strength"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_number(owner, name, value, low=0.0, low_open=True))
        low, high = self.strength_range()
        if high <= low:
            raise ConfigError(
                f"{owner}: max_strength must be > min_strength ({low!r} for {self.defense!r}), got {self.max_strength!r}."
                if self.max_strength is not None
                else f"{owner}: min_strength must be < max_strength ({high!r} for {self.defense!r}), got {self.min_strength!r}."
            )
        object.__setattr__(self, "ladder_factor", check_number(owner, "ladder_factor", self.ladder_factor, low=1.0, low_open=True))
        object.__setattr__(self, "confirmations", check_int(owner, "confirmations", self.confirmations, minimum=0))
        object.__setattr__(self, "block_lower_bound", check_bool(owner, "block_lower_bound", self.block_lower_bound))
        if self.total_seconds is not None:
            object.__setattr__(self, "total_seconds", check_number(owner, "total_seconds", self.total_seconds, low=0.0, low_open=True))
        object.__setattr__(self, "seed", check_seed(owner, self.seed))

    def strength_range(self) -> tuple[float, float]:
        """``(min_strength, max_strength)`` with the defense's defaults filled in."""
        spec = STRENGTHS[self.defense]
        return (
            spec.low if self.min_strength is None else self.min_strength,
            spec.high if self.max_strength is None else self.max_strength,
        )

    def strengths(self) -> tuple[float, ...]:
        """The ladder, weakest first."""
        return strength_ladder(*self.strength_range(), self.ladder_factor)

    def audit_config(self) -> SelfAuditConfig:
        """The :class:`SelfAuditConfig` of a rung's first audit (confirmations: :func:`audits_with_confirmations`)."""
        return SelfAuditConfig(
            metric=self.metric, max_images=self.max_images, max_seconds=self.max_seconds, max_iterations=self.max_iterations,
            restarts=self.restarts, seed=self.attack_seed, device=self.device, num_threads=self.num_threads,
            prior=self.prior, parallel_restarts=self.parallel_restarts,
        )


class CalibratedDefense(Defense):
    """The weakest strength of a wrapped defense whose self-audited leakage meets a target.

    See the module docstring for the search and its guarantees. ``apply`` needs the global model
    and a :class:`DefenseContext` with the client's data (``DefenseContext.from_training_meta``).

    Cost: up to ``len(config.strengths())`` applications of the wrapped defense and as many
    attacks (each within ``max_seconds`` / ``max_iterations``), plus ``confirmations`` attacks per
    rung that passes its first audit; no try starts after ``total_seconds``.

    Args:
        config: the configuration; None uses the :class:`CalibratedDefenseConfig` defaults.

    Raises:
        TypeError: if ``config`` is not a ``CalibratedDefenseConfig``.

    Example:
        >>> CalibratedDefense(CalibratedDefenseConfig(defense="laplacian")).name
        'CalibratedLaplacianNoise'
    """

    requires_global_state = True
    requires_data = True

    def __init__(self, config: CalibratedDefenseConfig | None = None) -> None:
        config = CalibratedDefenseConfig() if config is None else config
        if not isinstance(config, CalibratedDefenseConfig):
            raise TypeError(f"CalibratedDefense: config must be a CalibratedDefenseConfig, got {type(config).__name__}.")
        super().__init__(config.seed)
        self.config = config
        spec = STRENGTHS[config.defense]
        module = importlib.import_module(spec.module)
        self._defense_cls = getattr(module, spec.defense)
        self._config_cls = getattr(module, spec.config)
        self._field = spec.field
        self._audits = audits_with_confirmations(config.audit_config(), config.confirmations)

    @property
    def name(self) -> str:
        """``Calibrated`` + the wrapped defense's class name (e.g. ``CalibratedGaussianNoise``)."""
        return f"Calibrated{self._defense_cls.__name__}"

    @property
    def strength_name(self) -> str:
        """The wrapped config's field that is searched (``sigma0``, ``b``, ``budget``, ``epsilon``)."""
        return self._field

    def _build(self, strength: float, seed: int) -> Defense:
        return self._defense_cls(self._config_cls(**{self._field: strength, "seed": seed}))

    def apply(
        self, update: Mapping[str, Any], *, global_state: Mapping[str, Any] | None = None, context: DefenseContext | None = None
    ) -> DefenseOutcome:
        """Defend ``update`` at the weakest strength whose audited leakage meets the target.

        Returns:
            The :class:`DefenseOutcome` of the chosen rung; ``params`` holds the wrapped
            defense's params, ``strength`` and, under :data:`CALIBRATION_PARAM`, the record:
            ``status``, ``defense``, ``strength_name``, ``strength``, ``metric``, ``prior``, ``target``,
            ``value``, ``tries`` (strength, value = the largest of its ``audits``, ``lower_bound``
            when any of them was one, seconds of each; for a strength the wrapped defense could not
            apply, value None and its ``error``), ``num_tries``, ``seconds``, and ``reason``
            when skipped.

        Raises:
            TypeError: for a wrong argument type.
            CalibrationError: when no strength up to ``max_strength`` meets the target or the time
                budget runs out first.
            DataError: when the global model or the client's data is missing or the audit cannot run.
        """
        started = time.perf_counter()
        cfg = self.config
        owner = self.name
        if global_state is None:
            raise DataError(f"{owner}: global_state is required (the self-audit attacks the update from it).")
        if context is None:
            raise DataError(f"{owner}: context is required: a DefenseContext with the client's data (the self-audit scores against it).")
        if not isinstance(context, DefenseContext):
            raise TypeError(f"{owner}: context must be a DefenseContext with the client's data, got {type(context).__name__}.")
        validate_update(update, global_state, owner=owner)
        threat = threat_from_context(context)
        round_index = context_round(context, owner)
        seed = self._next_seed(round_index)
        deadline = None if cfg.total_seconds is None else started + cfg.total_seconds
        record: dict[str, Any] = {
            "defense": cfg.defense, "strength_name": self._field, "metric": cfg.metric, "prior": cfg.prior,
            "target": cfg.target, "margin": cfg.margin, "tries": [],
        }
        strengths = cfg.strengths()
        threshold = cfg.target - cfg.margin
        if threat.num_images > cfg.max_images:
            outcome = self._build(strengths[0], seed).apply(update, global_state=global_state, context=context)
            record.update(
                status=AuditStatus.SKIPPED.value, strength=strengths[0], value=None, num_tries=0,
                reason=f"{threat.num_images} local images > max_images={cfg.max_images}: not audited, min_strength applied",
            )
            return self._outcome(outcome, strengths[0], record, started)
        images, labels = np.asarray(context.images), np.asarray(context.labels)
        batch_order = client_batch_order(context)
        for strength in strengths:
            left = None if deadline is None else deadline - time.perf_counter()
            if left is not None and left <= 0:
                raise CalibrationError(
                    f"{owner}: the calibration budget total_seconds={cfg.total_seconds} ran out after {len(record['tries'])} "
                    f"tries before any {self._field} met {cfg.metric} <= {threshold:.4g} (target {cfg.target} - margin "
                    f"{cfg.margin}): {_tries_text(record['tries'])}."
                )
            try_started = time.perf_counter()
            try:
                outcome = self._build(strength, seed).apply(update, global_state=global_state, context=context)
            except DataError as exc:  # this strength cannot be applied (e.g. the latent's task-loss bound): try the next
                record["tries"].append(
                    {"strength": strength, "value": None, "audits": [], "lower_bound": False, "error": str(exc), "seconds": time.perf_counter() - try_started}
                )
                logger.info("%s: %s=%.4g cannot be applied: %s", owner, self._field, strength, exc)
                continue
            # Every audit gets its full attack budget: an attack cut short by the search budget would
            # be weaker and pass more easily, i.e. fail open. Confirmations run only while all pass.
            results = run_with_confirmations(
                self._audits, threshold, global_state, outcome.update, threat, images, labels, context.val_images, batch_order,
                block_lower_bound=cfg.block_lower_bound,
            )
            values = [float(result.value) for result in results]
            value = max(values)
            lower_bound = any(result.lower_bound for result in results)
            record["tries"].append(
                {"strength": strength, "value": value, "audits": values, "lower_bound": lower_bound, "seconds": time.perf_counter() - try_started}
            )
            logger.info(
                "%s: %s=%.4g gives %s=%s%s (needed <= %.4f)", owner, self._field, strength, cfg.metric, [round(v, 4) for v in values],
                ", a lower bound" if lower_bound else "", threshold,
            )
            if audit_passes(value, lower_bound, threshold, cfg.block_lower_bound):
                record.update(status=AuditStatus.AUDITED.value, strength=strength, value=value, num_tries=len(record["tries"]))
                return self._outcome(outcome, strength, record, started)
        raise CalibrationError(
            f"{owner}: no {self._field} up to max_strength={strengths[-1]!r} met {cfg.metric} <= {threshold:.4g} (target {cfg.target} - margin {cfg.margin}): "
            f"{_tries_text(record['tries'])}. Raise max_strength or the target, or keep this client out of the round."
        )

    def _outcome(self, outcome: DefenseOutcome, strength: float, record: dict[str, Any], started: float) -> DefenseOutcome:
        seconds = time.perf_counter() - started
        record["seconds"] = seconds
        params = {**outcome.params, "strength": strength, CALIBRATION_PARAM: record}
        return DefenseOutcome(update=outcome.update, noise_norm=outcome.noise_norm, params=params, seconds=seconds)


def _tries_text(tries: list[dict[str, Any]]) -> str:
    if not tries:
        return "no audit ran"
    return ", ".join(
        f"{t['strength']:.4g} -> not applied ({t['error']})" if "error" in t
        else f"{t['strength']:.4g} -> {t['value']:.4f}" + (" (a lower bound)" if t["lower_bound"] else "")
        for t in tries
    )
