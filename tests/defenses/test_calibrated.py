"""Core self-audit and calibrated defense (no FLARE): determinism, skipping, errors, the sent update is the audited one."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from nvflare_gia.attack import ThreatModel
from nvflare_gia.defenses.calibrated import CalibratedDefense, CalibratedDefenseConfig, CalibrationError
from nvflare_gia.defenses.self_audit import (
    LeakageGate, LeakageGateConfig, SelfAudit, SelfAuditConfig, audit_passes, audits_with_confirmations, threat_from_context,
)
from nvflare_gia.errors import ConfigError, DataError
from nvflare_gia.training import epoch_orders

SHORT = {"max_iterations": 40, "restarts": 1, "max_seconds": None, "num_threads": 1}


def _threat(case) -> ThreatModel:
    return threat_from_context(case.context())


def test_threat_from_context_matches_the_threat_model_the_server_builds_from_the_meta(high_risk_case):
    assert _threat(high_risk_case) == ThreatModel.from_meta(high_risk_case.meta())


def test_self_audit_is_deterministic_without_a_time_budget(high_risk_case):
    case = high_risk_case
    audit = SelfAudit(SelfAuditConfig(**SHORT))
    first = audit.run(case.global_state, case.update, _threat(case), case.images, case.labels)
    second = audit.run(case.global_state, case.update, _threat(case), case.images, case.labels)
    assert first.status == "audited" and first.value == second.value
    assert first.metrics["gia/rdlv"] == first.value and "gia/ssim" in first.metrics


def test_self_audit_skips_clients_above_max_images(cxr_case):
    result = SelfAudit(SelfAuditConfig(max_images=2, **SHORT)).run(
        cxr_case.global_state, cxr_case.update, _threat(cxr_case), cxr_case.images, cxr_case.labels
    )
    assert result.status == "skipped" and result.value is None and "4 local images > max_images=2" in result.reason


def test_self_audit_rejects_images_that_are_not_the_rounds(high_risk_case, cxr_case):
    with pytest.raises(DataError, match="images must be"):
        SelfAudit(SelfAuditConfig(**SHORT)).run(
            high_risk_case.global_state, high_risk_case.update, _threat(high_risk_case), cxr_case.images, cxr_case.labels
        )


def test_self_audit_with_the_servers_prior_measures_rdlv_against_the_validation_mean(high_risk_case, cxr_val_32):
    """``prior="val_retrieval"`` runs the attack the jobs' widget runs: a prior retrieved from the
    public validation images, RDLV against their mean (what the server holds before the update)."""
    case = high_risk_case
    args = (case.global_state, case.update, _threat(case), case.images, case.labels)
    flat = SelfAudit(SelfAuditConfig(**SHORT)).run(*args)
    served = SelfAudit(SelfAuditConfig(prior="val_retrieval", **SHORT)).run(*args, val_images=cxr_val_32)
    assert served.metrics["gia/retrieval_ranked"] == len(cxr_val_32) and "gia/retrieval_ranked" not in flat.metrics
    mean_ssim = structural_similarity(case.images[0, 0], cxr_val_32.mean(axis=0)[0], data_range=1.0)
    assert served.metrics["gia/prior_ssim"] == pytest.approx(mean_ssim, abs=1e-6)
    assert flat.metrics["gia/prior_ssim"] == pytest.approx(structural_similarity(case.images[0, 0], np.full((32, 32), 0.5, np.float32), data_range=1.0), abs=1e-6)
    ssim, prior_ssim = served.metrics["gia/ssim"], served.metrics["gia/prior_ssim"]
    assert served.value == served.metrics["gia/rdlv"] == pytest.approx((ssim - prior_ssim) / prior_ssim)
    # the retrieved prior starts and pulls the attack: far better images than from flat gray
    assert served.metrics["gia/ssim"] > flat.metrics["gia/ssim"] + 0.1


def test_self_audit_with_a_validation_prior_fails_without_valid_val_images(high_risk_case, cxr_case):
    case = high_risk_case
    args = (case.global_state, case.update, _threat(case), case.images, case.labels)
    audit = SelfAudit(SelfAuditConfig(prior="val_mean", **SHORT))
    with pytest.raises(DataError, match=r"prior='val_mean' needs val_images"):
        audit.run(*args)
    with pytest.raises(DataError, match=r"val_images must be finite with shape \(M, 1, 32, 32\), got \(4, 1, 64, 64\)"):
        audit.run(*args, val_images=cxr_case.images)
    with pytest.raises(ConfigError, match=r"prior must be one of \['flat', 'val_mean', 'val_retrieval'\], got 'mean'"):
        SelfAuditConfig(prior="mean")


def test_calibrated_defense_audits_with_the_contexts_validation_images(high_risk_case, cxr_val_32):
    case = high_risk_case
    config = CalibratedDefenseConfig(target=10.0, seed=0, prior="val_mean", block_lower_bound=False, **SHORT)
    with pytest.raises(DataError, match="needs val_images"):  # fails closed: no update without its audit
        CalibratedDefense(config).apply(case.update, global_state=case.global_state, context=case.context())
    context = dataclasses.replace(case.context(), val_images=cxr_val_32)
    outcome = CalibratedDefense(config).apply(case.update, global_state=case.global_state, context=context)
    calibration = outcome.params["gia_calibration"]
    assert calibration["status"] == "audited" and calibration["prior"] == "val_mean"
    again = [
        audit.run(case.global_state, outcome.update, _threat(case), case.images, case.labels, cxr_val_32).value
        for audit in audits_with_confirmations(config.audit_config(), config.confirmations)
    ]
    assert calibration["tries"][0]["audits"] == again


def test_gate_decision_compares_with_the_threshold(high_risk_case):
    case = high_risk_case
    args = (case.global_state, case.update, _threat(case), case.images, case.labels)
    strict = LeakageGate(LeakageGateConfig(threshold=-10.0, **SHORT)).audit(*args, round_index=0)
    lenient = LeakageGate(LeakageGateConfig(threshold=10.0, block_lower_bound=False, **SHORT)).audit(*args, round_index=0)
    assert strict["passed"] is False and lenient["passed"] is True
    # a failing first audit needs no confirmation; a passing one is confirmed with the next attack seed
    assert len(strict["audits"]) == 1 and strict["value"] == strict["audits"][0] == lenient["audits"][0]
    assert len(lenient["audits"]) == 2 and lenient["value"] == max(lenient["audits"])
    gate = LeakageGate(LeakageGateConfig(threshold=-10.0, every_n_rounds=3, **SHORT))
    assert gate.take_turn() is True  # the first update is due, whatever the server's round number
    assert gate.take_turn() is False  # the client's 2nd update: not due, although the server says round 0
    skipped = gate.skip(round_index=0)
    assert skipped["status"] == "skipped" and skipped["passed"] is True and skipped["round"] == 0
    assert [gate.take_turn() for _ in range(4)] == [False, True, False, False]
    gate.reset()
    assert gate.take_turn() is True


def test_gate_blocks_an_update_whose_passing_audit_is_only_a_lower_bound(high_risk_case):
    """An undefended update the short attack fails to invert passes the threshold, but its true
    images fit it far better than the reconstruction: the audit cannot vouch for it. A noised
    update the truth no longer fits better is judged by the threshold alone."""
    case = high_risk_case
    threat = _threat(case)
    gate = LeakageGate(LeakageGateConfig(threshold=10.0, confirmations=0, **SHORT))
    undefended = gate.audit(case.global_state, case.update, threat, case.images, case.labels)
    audit = SelfAudit(SelfAuditConfig(**SHORT)).run(case.global_state, case.update, threat, case.images, case.labels)
    assert audit.metrics["gia/truth_matching_loss"] < 1e-4 and audit.lower_bound
    assert undefended["value"] <= 10.0 and undefended["lower_bound"] is True and undefended["passed"] is False
    rng = np.random.default_rng(0)
    noised = {k: v + 0.05 * rng.standard_normal(v.shape).astype(v.dtype) if v.dtype.kind == "f" and "running" not in k else v
              for k, v in case.update.items()}
    defended = gate.audit(case.global_state, noised, threat, case.images, case.labels)
    assert defended["lower_bound"] is False and defended["passed"] is True
    lenient = LeakageGate(LeakageGateConfig(threshold=10.0, confirmations=0, block_lower_bound=False, **SHORT))
    assert lenient.audit(case.global_state, case.update, threat, case.images, case.labels)["passed"] is True
    with pytest.raises(DataError, match=r"batch_order must be a permutation of range\(1\), got \[1\]"):
        SelfAudit(SelfAuditConfig(**SHORT)).run(case.global_state, case.update, threat, case.images, case.labels, batch_order=[1])
    with pytest.raises(TypeError, match="block_lower_bound must be a bool, got 1"):
        LeakageGateConfig(block_lower_bound=1)


@pytest.mark.parametrize(
    "value, lower_bound, block_lower_bound, expected",
    [
        (0.0, False, True, True),  # at the threshold
        (0.01, False, True, False),  # over it
        (None, False, True, True),  # skipped: nothing scored
        (-0.5, True, True, False),  # passes, but only a lower bound
        (-0.5, True, False, True),  # ... which counts only with block_lower_bound
        (0.01, True, False, False),
    ],
)
def test_audit_passes_is_the_one_pass_rule(value, lower_bound, block_lower_bound, expected):
    assert audit_passes(value, lower_bound, threshold=0.0, block_lower_bound=block_lower_bound) is expected


def test_self_audit_scores_the_truth_in_the_clients_batches(small_site_case):
    """Two steps of four: the truth fits the update only in the batches train_local drew."""
    case = small_site_case
    args = (case.global_state, case.update, _threat(case), case.images, case.labels)
    audit = SelfAudit(SelfAuditConfig(**{**SHORT, "max_iterations": 1}))
    in_order = audit.run(*args, batch_order=epoch_orders(len(case.images), case.training, 0)[0].numpy())
    as_stored = audit.run(*args)
    assert in_order.metrics["gia/truth_matching_loss"] < 1e-4 < 1e-2 < as_stored.metrics["gia/truth_matching_loss"]
    assert in_order.lower_bound  # one iteration is far from the fit the truth shows


def test_gate_blocks_when_a_confirmation_fails_although_the_first_audit_passed(high_risk_case):
    case = high_risk_case
    args = (case.global_state, case.update, _threat(case), case.images, case.labels)
    values = {seed: SelfAudit(SelfAuditConfig(**SHORT, seed=seed)).run(*args).value for seed in range(6)}
    assert len(set(values.values())) > 1  # other attack seeds, other reconstructions
    # a first seed whose audit is not the largest of it and its two confirmations (seeds + 1, + 2)
    seed = next(s for s in range(4) if values[s] < max(values[s + 1], values[s + 2]))
    config = LeakageGateConfig(confirmations=2, seed=seed, block_lower_bound=False, **SHORT)
    assert [audit.config.seed for audit in audits_with_confirmations(config.audit_config(), 2)] == [seed, seed + 1, seed + 2]
    chain = [values[seed + index] for index in range(3)]
    threshold = (chain[0] + max(chain)) / 2  # the first audit passes, a confirmation fails
    decision = LeakageGate(dataclasses.replace(config, threshold=threshold)).audit(*args, round_index=0)
    failing = next(index for index, value in enumerate(chain) if value > threshold)
    assert decision["passed"] is False and decision["audits"] == chain[: failing + 1]
    assert decision["value"] == chain[failing]
    unconfirmed = LeakageGate(dataclasses.replace(config, threshold=threshold, confirmations=0)).audit(*args, round_index=0)
    assert unconfirmed["passed"] is True and unconfirmed["audits"] == chain[:1]


def test_calibrated_defense_sends_the_update_it_audited(high_risk_case):
    case = high_risk_case
    config = CalibratedDefenseConfig(target=10.0, seed=0, block_lower_bound=False, **SHORT)
    outcome = CalibratedDefense(config).apply(case.update, global_state=case.global_state, context=case.context())
    calibration = outcome.params["gia_calibration"]
    assert calibration["status"] == "audited" and calibration["num_tries"] == 1 and calibration["strength"] == 0.1
    # the rung passed its audit and one confirmation with the next attack seed; the record keeps the larger
    again = [
        audit.run(case.global_state, outcome.update, _threat(case), case.images, case.labels).value
        for audit in audits_with_confirmations(config.audit_config(), config.confirmations)
    ]
    assert config.confirmations == 1 and calibration["tries"][0]["audits"] == again
    assert calibration["value"] == max(again)
    for key, value in case.update.items():
        assert outcome.update[key].dtype == value.dtype
        if value.dtype.kind == "f":
            assert not np.array_equal(outcome.update[key], value), key


def test_calibrated_defense_raises_calibration_error_when_no_rung_meets_the_target(high_risk_case):
    case = high_risk_case
    defense = CalibratedDefense(CalibratedDefenseConfig(target=-10.0, max_strength=0.4, seed=0, **SHORT))
    with pytest.raises(
        CalibrationError, match=r"no sigma0 up to max_strength=0.4 met rdlv <= -10.3 \(target -10.0 - margin 0.3\): 0.1 -> .*, 0.2 -> .*, 0.4 -> "
    ):
        defense.apply(case.update, global_state=case.global_state, context=case.context())


def test_calibrated_defense_requires_the_audit_to_beat_the_target_by_the_margin(high_risk_case):
    case = high_risk_case
    shared = {"min_strength": 0.1, "max_strength": 1000.0, "ladder_factor": 10.0, "seed": 0, **SHORT}
    unshifted = CalibratedDefense(CalibratedDefenseConfig(target=0.2, margin=0.0, **shared))
    no_margin = unshifted.apply(case.update, global_state=case.global_state, context=case.context())
    first = no_margin.params["gia_calibration"]
    # the target at the audit value of the first pass, so that a margin must push the search further
    target = first["value"] + 0.05
    with_margin = CalibratedDefense(CalibratedDefenseConfig(target=target, margin=0.2, **shared))
    shifted = CalibratedDefense(CalibratedDefenseConfig(target=target - 0.2, margin=0.0, **shared))
    margin_record = with_margin.apply(case.update, global_state=case.global_state, context=case.context()).params["gia_calibration"]
    shifted_record = shifted.apply(case.update, global_state=case.global_state, context=case.context()).params["gia_calibration"]
    assert margin_record["margin"] == 0.2 and margin_record["target"] == target
    assert margin_record["value"] <= target - 0.2
    assert all(t["value"] > target - 0.2 for t in margin_record["tries"][:-1])
    assert (margin_record["strength"], margin_record["value"]) == (shifted_record["strength"], shifted_record["value"])
    assert margin_record["strength"] > first["strength"]


def test_calibrated_defense_needs_the_global_model_and_the_data(high_risk_case):
    from nvflare_gia.defenses import DefenseContext

    defense = CalibratedDefense(CalibratedDefenseConfig(seed=0, **SHORT))
    with pytest.raises(DataError, match="global_state is required"):
        defense.apply(high_risk_case.update, context=high_risk_case.context())
    with pytest.raises(DataError, match="missing"):
        defense.apply(high_risk_case.update, global_state=high_risk_case.global_state, context=DefenseContext(round_index=0))
    with pytest.raises(DataError, match="context is required"):
        defense.apply(high_risk_case.update, global_state=high_risk_case.global_state)
    with pytest.raises(TypeError, match="context must be a DefenseContext .*got dict"):
        defense.apply(high_risk_case.update, global_state=high_risk_case.global_state, context={"round_index": 0})


def test_calibrated_latent_defense_wraps_the_latent_perturbation(high_risk_case):
    case = high_risk_case
    defense = CalibratedDefense(CalibratedDefenseConfig(defense="latent", target=10.0, seed=0, **SHORT))
    outcome = defense.apply(case.update, global_state=case.global_state, context=case.context())
    assert defense.name == "CalibratedLatentPerturbation" and outcome.params["epsilon"] == outcome.params["strength"] == 0.1


def test_calibrated_config_rejects_an_empty_strength_range():
    with pytest.raises(ConfigError, match=r"max_strength must be > min_strength \(2.0 for 'gaussian'\), got 1.0"):
        CalibratedDefenseConfig(min_strength=2.0, max_strength=1.0)


class _FixedAudit:
    """Stands in for ``SelfAudit``: returns preset values in turn (tests the ladder, not the attack);
    a value given as the string ``"<v> lb"`` is a lower bound."""

    def __init__(self, values):
        self.values = list(values)

    def run(self, *args):
        value = self.values.pop(0)
        if isinstance(value, str):
            return SimpleNamespace(value=float(value.split()[0]), lower_bound=True)
        return SimpleNamespace(value=value, lower_bound=False)


@pytest.mark.parametrize(
    ("confirmations", "first", "confirming", "strength", "audits"),
    [
        (1, [-0.5, -0.3], [0.2, -0.1], 0.2, [[-0.5, 0.2], [-0.3, -0.1]]),  # rung 0.1 passes once, fails its confirmation: the ladder climbs
        (1, [0.4, -0.5], [-0.6], 0.2, [[0.4], [-0.5, -0.6]]),  # a failed first audit is not confirmed
        (0, [-0.5], [], 0.1, [[-0.5]]),  # no confirmation: the first pass is taken
        (1, ["-0.5 lb", -0.4], [-0.3], 0.2, [[-0.5], [-0.4, -0.3]]),  # a lower bound does not pass and is not confirmed
        (1, [-0.5, -0.4], ["-0.3 lb", -0.2], 0.2, [[-0.5, -0.3], [-0.4, -0.2]]),  # nor does a confirmation that is one
    ],
)
def test_a_passing_rung_must_also_pass_its_confirmations(high_risk_case, confirmations, first, confirming, strength, audits):
    case = high_risk_case
    config = CalibratedDefenseConfig(target=0.0, margin=0.0, min_strength=0.1, max_strength=0.4, confirmations=confirmations, seed=0, **SHORT)
    defense = CalibratedDefense(config)
    defense._audits = [_FixedAudit(first), _FixedAudit(confirming)][: 1 + confirmations]
    calibration = defense.apply(case.update, global_state=case.global_state, context=case.context()).params["gia_calibration"]
    assert calibration["strength"] == strength
    assert [t["audits"] for t in calibration["tries"]] == audits
    assert calibration["value"] == max(audits[-1])


class _Refusing:
    """Stands in for a wrapped defense that cannot be applied at the strengths in ``refused`` (as the
    latent perturbation when no shift keeps the task loss within its bound); else the real one."""

    def __init__(self, defense, strength: float, refused: tuple[float, ...]):
        self.defense, self.strength, self.refused = defense, strength, refused

    def apply(self, update, **kwargs):
        if self.strength in self.refused:
            raise DataError(f"cannot apply strength {self.strength}")
        return self.defense.apply(update, **kwargs)


@pytest.mark.parametrize(("refused", "audits", "strength"), [((0.2, 0.4), [0.5], None), ((0.2,), [0.5, -0.5], 0.4)])
def test_a_rung_the_defense_cannot_apply_is_recorded_and_never_sent(high_risk_case, monkeypatch, refused, audits, strength):
    """A strength the wrapped defense refuses is a failed try, not an error out of the search: the
    ladder goes on, and when no applied rung passes the update is blocked with the reasons."""
    case = high_risk_case
    config = CalibratedDefenseConfig(target=0.0, margin=0.0, min_strength=0.1, max_strength=0.4, confirmations=0, seed=0, **SHORT)
    defense = CalibratedDefense(config)
    build = defense._build
    monkeypatch.setattr(defense, "_build", lambda s, seed: _Refusing(build(s, seed), s, refused))
    defense._audits = [_FixedAudit(audits)]
    if strength is None:
        with pytest.raises(CalibrationError, match=r"0.1 -> 0.5000, 0.2 -> not applied \(cannot apply strength 0.2\), 0.4 -> not applied"):
            defense.apply(case.update, global_state=case.global_state, context=case.context())
        return
    outcome = defense.apply(case.update, global_state=case.global_state, context=case.context())
    calibration = outcome.params["gia_calibration"]
    assert outcome.params["strength"] == calibration["strength"] == strength and calibration["num_tries"] == 3
    assert [t["value"] for t in calibration["tries"]] == [0.5, None, -0.5]
    assert calibration["tries"][1]["error"] == "cannot apply strength 0.2" and "error" not in calibration["tries"][2]


def test_calibrated_defense_climbs_past_a_rung_whose_audit_is_only_a_lower_bound(high_risk_case):
    """At the weakest Gaussian rung the short attack fails while the truth still fits the update:
    every value passes a target of 10, but only a rung whose noise the truth no longer fits is sent."""
    case = high_risk_case
    shared = {"target": 10.0, "min_strength": 0.1, "max_strength": 100.0, "ladder_factor": 10.0, "confirmations": 0, "seed": 0, **SHORT}
    strict = CalibratedDefense(CalibratedDefenseConfig(**shared)).apply(case.update, global_state=case.global_state, context=case.context())
    lenient = CalibratedDefense(CalibratedDefenseConfig(block_lower_bound=False, **shared)).apply(
        case.update, global_state=case.global_state, context=case.context()
    )
    tries = strict.params["gia_calibration"]["tries"]
    assert lenient.params["strength"] == 0.1 and lenient.params["gia_calibration"]["tries"][0]["lower_bound"] is True
    assert len(tries) >= 2 and all(t["lower_bound"] for t in tries[:-1]) and tries[-1]["lower_bound"] is False
    assert strict.params["strength"] == tries[-1]["strength"] > 0.1
    with pytest.raises(TypeError, match="block_lower_bound must be a bool, got 'yes'"):
        CalibratedDefenseConfig(block_lower_bound="yes")


@pytest.mark.parametrize("confirmations", [-1, 1.5, True])
def test_calibrated_config_rejects_bad_confirmations(confirmations):
    with pytest.raises((ConfigError, TypeError), match="confirmations"):
        CalibratedDefenseConfig(confirmations=confirmations)
