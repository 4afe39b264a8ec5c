"""The self-audit filters (leakage gate, calibrated defense), run through ``filter.process`` with a real FLContext.

Real 64×64 chest X-rays (``nih_cxr_path``); attack budgets are iteration counts with no time limit
(``max_seconds=None``), so every audit is deterministic. The workspace holds two data specs: the
TMI 2023 partition (site-1: 1 image, batch 1, the high-risk site) and an even partition with 8
images at batch 8 per site.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.filter import ContentBlockedException
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from nvflare_gia.attack import AttackConfig
from nvflare_gia.data import DataSpec, load_site_data, load_splits
from nvflare_gia.defenses import DefenseContext
from nvflare_gia.defenses.calibrated import CalibratedDefenseConfig, strength_ladder
from nvflare_gia.defenses.self_audit import LeakageGateConfig, SelfAudit, SelfAuditConfig, threat_from_context
from nvflare_gia.flare.audit_filters import (
    GIA_CALIBRATION_META_KEY,
    GIA_GATE_META_KEY,
    CalibratedDefenseFilter,
    LeakageGateFilter,
)
from nvflare_gia.flare.filters import GIA_DEFENSE_META_KEY, GaussianNoiseFilter

SITE = "site-1"
JOB_ID = "job-1"
ROUND = 2
TASK_ID = "task-a"
LARGE_BATCH_SPEC = "gia_data_batch8.json"
#: deterministic, short attack budgets (iterations, no wall clock)
FAST = {"max_iterations": 200, "restarts": 1, "max_seconds": None}
TINY = {"max_iterations": 5, "restarts": 1, "max_seconds": None}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclasses.dataclass(frozen=True)
class Round:
    global_state: dict[str, np.ndarray]
    update: dict[str, np.ndarray]
    meta: dict


@dataclasses.dataclass(frozen=True)
class Site:
    engine: Any
    high_risk: Round  # 1 image, batch 1 (gia_data.json)
    large_batch: Round  # 8 images, batch 8 (LARGE_BATCH_SPEC)


@pytest.fixture(scope="module")
def site(tmp_path_factory, nih_cxr_path, site_workspace, train_site_round) -> Site:
    engine, config_dir = site_workspace(tmp_path_factory.mktemp("workspace"), SITE, JOB_ID)
    names = (SITE, "site-2", "site-3")
    high_risk = DataSpec(source=str(nih_cxr_path), scheme="tmi2023", site_names=names)
    large_batch = DataSpec(source=str(nih_cxr_path), scheme="even", batch_size=8, max_train_images=24, site_names=names)
    (config_dir / "gia_data.json").write_text(high_risk.to_json())
    (config_dir / LARGE_BATCH_SPEC).write_text(large_batch.to_json())
    return Site(engine, Round(*train_site_round(high_risk, SITE, ROUND)), Round(*train_site_round(large_batch, SITE, ROUND)))


def _context(site: Site) -> FLContext:
    fl_ctx = site.engine.new_context()
    fl_ctx.set_prop(FLContextKey.TASK_ID, TASK_ID, private=True, sticky=False)
    fl_ctx.set_prop(FLContextKey.TASK_NAME, "train", private=True, sticky=False)
    return fl_ctx


def _deliver(flt, fl_ctx: FLContext, case: Round, round_index: int = ROUND, *, start_run: bool = True) -> None:
    """What FLARE does around the executor: TASK_DATA at BEFORE_TASK_EXECUTION, cleared afterwards
    (after ``START_RUN`` when ``start_run``: the run's first task)."""
    task_data = DXO(DataKind.WEIGHTS, dict(case.global_state)).to_shareable()
    task_data.set_header(AppConstants.CURRENT_ROUND, round_index)
    if start_run:
        flt.handle_event(EventType.START_RUN, fl_ctx)
    fl_ctx.set_prop(FLContextKey.TASK_DATA, task_data, private=True, sticky=False)
    flt.handle_event(EventType.BEFORE_TASK_EXECUTION, fl_ctx)
    fl_ctx.set_prop(FLContextKey.TASK_DATA, None, private=True, sticky=False)


def _result(case: Round, data: dict | None = None, meta: dict | None = None, kind: str = DataKind.WEIGHT_DIFF) -> Shareable:
    source = data if data is not None else case.update
    return DXO(kind, {k: np.array(v, copy=True) for k, v in source.items()}, meta=copy.deepcopy(meta if meta is not None else case.meta)).to_shareable()


def _run(filters, site: Site, case: Round, shareable: Shareable | None = None, *, deliver: bool = True, round_index: int = ROUND) -> DXO:
    """Run a chain of filters on one result, as FLARE's client runner does."""
    filters = filters if isinstance(filters, (list, tuple)) else [filters]
    fl_ctx = _context(site)
    if deliver:
        for flt in filters:
            _deliver(flt, fl_ctx, case, round_index)
    out = shareable if shareable is not None else _result(case)
    for flt in filters:
        out = flt.process(out, fl_ctx)
    return from_shareable(out)


# ---------------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("filter_cls", "config_cls"), [(LeakageGateFilter, LeakageGateConfig), (CalibratedDefenseFilter, CalibratedDefenseConfig)],
    ids=lambda c: c.__name__,
)
def test_filter_signature_matches_its_config_fields_and_defaults(filter_cls, config_cls):
    parameters = inspect.signature(filter_cls.__init__).parameters
    fields = {f.name: f.default for f in dataclasses.fields(config_cls)}
    assert set(parameters) - {"self"} == set(fields) | {"data_spec"}
    for name, default in fields.items():
        assert parameters[name].default == default, name
    assert parameters["data_spec"].default == "gia_data.json"
    flt = filter_cls()
    for name, default in fields.items():
        assert getattr(flt, name) == default, name


def test_attack_defaults_come_from_attack_config():
    for config_cls, seed_field in ((SelfAuditConfig, "seed"), (LeakageGateConfig, "seed"), (CalibratedDefenseConfig, "attack_seed")):
        defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
        for field in ("max_seconds", "max_iterations", "restarts", "device", "num_threads", "parallel_restarts"):
            assert defaults[field] == getattr(AttackConfig, field), (config_cls.__name__, field)
        assert defaults[seed_field] == AttackConfig.seed


def test_parallel_restarts_reach_the_audits_attack():
    assert SelfAuditConfig(parallel_restarts=2).attack_config().parallel_restarts == 2
    for config in (LeakageGateConfig(parallel_restarts=3), CalibratedDefenseConfig(parallel_restarts=3)):
        assert config.audit_config().attack_config().parallel_restarts == 3
    gate = LeakageGateFilter(parallel_restarts=4)
    assert gate._gate.config.audit_config().attack_config().parallel_restarts == 4


def test_strength_ladder_is_geometric_and_ends_at_max():
    assert strength_ladder(0.1, 100.0, 10.0) == pytest.approx((0.1, 1.0, 10.0, 100.0))
    assert strength_ladder(1.0, 5.0, 2.0) == (1.0, 2.0, 4.0, 5.0)
    assert CalibratedDefenseConfig(defense="shadow", max_strength=0.4).strengths() == pytest.approx((0.1, 0.2, 0.4))


def test_core_self_audit_modules_do_not_import_nvflare():
    code = (
        "import sys, nvflare_gia.defenses.self_audit, nvflare_gia.defenses.calibrated\n"
        "print(','.join(sorted(m for m in sys.modules if m == 'nvflare' or m.startswith('nvflare.'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("filter_cls", [LeakageGateFilter, CalibratedDefenseFilter], ids=lambda c: c.__name__)
def test_filters_build_from_a_json_component_config(filter_cls, build_component):
    path = f"nvflare_gia.flare.audit_filters.{filter_cls.__name__}"
    assert isinstance(build_component(path, {}), filter_cls)
    assert build_component(path, {"max_iterations": 7}).max_iterations == 7


# ---------------------------------------------------------------------------------------- the gate


def test_gate_blocks_the_undefended_high_risk_update(site):
    gate = LeakageGateFilter(threshold=0.0, **FAST)
    with pytest.raises(ContentBlockedException, match=r"self-audited rdlv = .* > threshold 0.0"):
        _run(gate, site, site.high_risk)


def test_gate_passes_a_large_batch_update_and_records_the_audit(site):
    gate = LeakageGateFilter(threshold=0.0, block_lower_bound=False, data_spec=LARGE_BATCH_SPEC, **FAST)
    dxo = _run(gate, site, site.large_batch)
    record = dxo.get_meta_prop(GIA_GATE_META_KEY)
    assert record["status"] == "audited" and record["passed"] is True and record["lower_bound"] is True
    assert record["metric"] == "rdlv" and record["value"] <= 0.0 and record["threshold"] == 0.0
    assert record["round"] == ROUND and record["seconds"] > 0 and record["attack_iterations"] == FAST["max_iterations"]
    for key, value in site.large_batch.update.items():
        assert np.array_equal(dxo.data[key], value), key
    assert "LeakageGateFilter" in dxo.get_filter_history()


def test_gate_blocks_a_passing_audit_that_is_only_a_lower_bound(site):
    """The same large-batch update: its RDLV passes, but the true images, put in the batches the
    client drew from its reported seed and the round, fit it far better than the reconstruction."""
    gate = LeakageGateFilter(threshold=0.0, confirmations=0, data_spec=LARGE_BATCH_SPEC, **FAST)
    with pytest.raises(ContentBlockedException, match=r"rdlv = -?[0-9.]+ <= threshold 0.0, but only a lower bound"):
        _run(gate, site, site.large_batch)


def test_gate_after_a_defense_audits_the_defended_update_by_ssim(site):
    """Gaussian filter then the gate (the gate job's chain), on WEIGHTS; SSIM as the metric."""
    weights = {k: site.high_risk.global_state[k] + site.high_risk.update[k] for k in site.high_risk.update}
    chain = [GaussianNoiseFilter(sigma0=100.0, seed=0), LeakageGateFilter(metric="ssim", threshold=0.9, **TINY)]
    dxo = _run(chain, site, site.high_risk, _result(site.high_risk, weights, kind=DataKind.WEIGHTS))
    record = dxo.get_meta_prop(GIA_GATE_META_KEY)
    assert record["metric"] == "ssim" and record["passed"] is True and -1.0 <= record["value"] <= 0.9
    assert dxo.get_meta_prop(GIA_DEFENSE_META_KEY)["name"] == "GaussianNoise"
    assert dxo.data_kind == DataKind.WEIGHTS


def test_gate_counts_the_updates_itself_so_server_round_numbers_cannot_dodge_the_audit(site):
    """every_n_rounds=2 audits the client's 1st, 3rd, ... update, whatever round numbers the server
    sends: a server that always said round 1 would have skipped every audit by its numbering."""
    gate = LeakageGateFilter(every_n_rounds=2, threshold=1e9, block_lower_bound=False, **TINY)
    fl_ctx = _context(site)
    records = []
    for turn in range(3):
        _deliver(gate, fl_ctx, site.high_risk, round_index=1, start_run=turn == 0)
        records.append(from_shareable(gate.process(_result(site.high_risk), fl_ctx)).get_meta_prop(GIA_GATE_META_KEY))
    assert [r["status"] for r in records] == ["audited", "skipped", "audited"]
    assert all(r["passed"] is True and r["round"] == 1 for r in records)
    assert records[0]["value"] is not None and records[1]["value"] is None and "every_n_rounds=2" in records[1]["reason"]
    _deliver(gate, fl_ctx, site.high_risk, round_index=1)  # a new run starts counting again: its first update is audited
    assert from_shareable(gate.process(_result(site.high_risk), fl_ctx)).get_meta_prop(GIA_GATE_META_KEY)["status"] == "audited"


def test_gate_with_the_widgets_prior_audits_against_the_data_specs_validation_split(site, nih_cxr_path):
    """``prior="val_retrieval"`` (the jobs' widget prior): the filter reads the whole validation
    split of the job's data spec, as the widget does, and its decision is the core audit's."""
    gate = LeakageGateFilter(threshold=1e9, confirmations=0, block_lower_bound=False, prior="val_retrieval", **FAST)
    record = _run(gate, site, site.high_risk).get_meta_prop(GIA_GATE_META_KEY)
    assert record["status"] == "audited" and record["prior"] == "val_retrieval" and record["passed"] is True
    spec = DataSpec(source=str(nih_cxr_path), scheme="tmi2023", site_names=(SITE, "site-2", "site-3"))
    site_data = load_site_data(spec, SITE)
    context = DefenseContext.from_training_meta(site.high_risk.meta, images=site_data.train_images, labels=site_data.train_labels)
    core = SelfAudit(SelfAuditConfig(prior="val_retrieval", **FAST)).run(
        site.high_risk.global_state, site.high_risk.update, threat_from_context(context), site_data.train_images,
        site_data.train_labels, load_splits(spec).val_images,
    )
    assert record["value"] == core.value and core.metrics["gia/retrieval_ranked"] == len(load_splits(spec).val_images)
    flat = _run(LeakageGateFilter(threshold=1e9, confirmations=0, block_lower_bound=False, **FAST), site, site.high_risk)
    flat = flat.get_meta_prop(GIA_GATE_META_KEY)
    assert flat["prior"] == "flat" and flat["value"] != record["value"]


def test_gate_passes_clients_above_max_images_without_an_audit(site):
    dxo = _run(LeakageGateFilter(max_images=4, data_spec=LARGE_BATCH_SPEC, **TINY), site, site.large_batch)
    record = dxo.get_meta_prop(GIA_GATE_META_KEY)
    assert record["status"] == "skipped" and record["passed"] is True and "max_images=4" in record["reason"]


# ---------------------------------------------------------------------------------------- calibration


def test_calibrated_strength_is_monotone_in_the_target(site):
    chosen = {}
    for target in (0.5, 0.0, -0.3):
        flt = CalibratedDefenseFilter(target=target, margin=0.0, min_strength=1.0, max_strength=1000.0, ladder_factor=10.0, seed=0, **FAST)
        dxo = _run(flt, site, site.high_risk)
        calibration = dxo.get_meta_prop(GIA_CALIBRATION_META_KEY)
        assert calibration["status"] == "audited" and calibration["value"] <= target
        assert calibration["num_tries"] == len(calibration["tries"])
        assert all(t["value"] > target for t in calibration["tries"][:-1])
        record = dxo.get_meta_prop(GIA_DEFENSE_META_KEY)
        assert record["name"] == "CalibratedGaussianNoise"
        assert record["params"]["sigma0"] == calibration["strength"] == record["params"]["strength"]
        assert "gia_calibration" not in record["params"] and record["params"]["calibration"] == "exact"  # GaussianNoise's own
        chosen[target] = calibration["strength"]
    assert chosen[0.5] <= chosen[0.0] <= chosen[-0.3]
    assert chosen[0.5] < chosen[-0.3]


def test_calibrated_filter_applies_min_strength_to_clients_above_max_images(site):
    flt = CalibratedDefenseFilter(max_images=4, seed=0, data_spec=LARGE_BATCH_SPEC, **TINY)
    dxo = _run(flt, site, site.large_batch)
    calibration = dxo.get_meta_prop(GIA_CALIBRATION_META_KEY)
    assert calibration["status"] == "skipped" and calibration["strength"] == 0.1 and calibration["num_tries"] == 0
    assert dxo.get_meta_prop(GIA_DEFENSE_META_KEY)["params"]["sigma0"] == 0.1


def test_calibrated_filter_fails_closed_when_no_strength_reaches_the_target(site):
    flt = CalibratedDefenseFilter(target=-5.0, min_strength=0.1, max_strength=0.2, seed=0, **TINY)
    with pytest.raises(ContentBlockedException, match=r"no sigma0 up to max_strength=0.2 met rdlv <= -5.3 \(target -5.0 - margin 0.3\)"):
        _run(flt, site, site.high_risk)


def test_calibrated_filter_fails_closed_when_the_budget_runs_out(site):
    flt = CalibratedDefenseFilter(total_seconds=1e-6, seed=0, **TINY)
    with pytest.raises(ContentBlockedException, match="total_seconds=1e-06 ran out"):
        _run(flt, site, site.high_risk)


def test_calibrated_shadow_defends_the_high_risk_update(site):
    flt = CalibratedDefenseFilter(defense="shadow", target=0.5, min_strength=0.5, max_strength=2.0, seed=0, **TINY)
    dxo = _run(flt, site, site.high_risk)
    assert dxo.get_meta_prop(GIA_DEFENSE_META_KEY)["name"] == "CalibratedShadowModelDefense"
    assert dxo.get_meta_prop(GIA_CALIBRATION_META_KEY)["strength_name"] == "budget"


# ---------------------------------------------------------------------------------------- failing closed (both)


def _both(**kwargs):
    return [LeakageGateFilter(**TINY, **kwargs), CalibratedDefenseFilter(seed=0, **TINY, **kwargs)]


@pytest.mark.parametrize("index", [0, 1], ids=["gate", "calibrated"])
def test_fail_closed_without_a_cached_global_model(site, index):
    with pytest.raises(ContentBlockedException, match="was not cached"):
        _run(_both()[index], site, site.high_risk, deliver=False)


@pytest.mark.parametrize("index", [0, 1], ids=["gate", "calibrated"])
def test_fail_closed_without_the_data_spec(site, index):
    with pytest.raises(ContentBlockedException, match="data_spec"):
        _run(_both(data_spec="missing.json")[index], site, site.high_risk)


@pytest.mark.parametrize("index", [0, 1], ids=["gate", "calibrated"])
def test_fail_closed_on_a_malformed_update(site, index):
    bad = {k: np.array(v, copy=True) for k, v in site.high_risk.update.items()}
    bad["features.0.weight"].flat[3] = np.nan
    with pytest.raises(ContentBlockedException, match="non-finite"):
        _run(_both()[index], site, site.high_risk, _result(site.high_risk, bad))
    missing = {k: v for k, v in site.high_risk.update.items() if k != "classifier.bias"}
    with pytest.raises(ContentBlockedException, match="lacks"):
        _run(_both()[index], site, site.high_risk, _result(site.high_risk, missing))


@pytest.mark.parametrize("index", [0, 1], ids=["gate", "calibrated"])
def test_fail_closed_without_training_meta(site, index):
    with pytest.raises(ContentBlockedException, match="gia_training"):
        _run(_both()[index], site, site.high_risk, _result(site.high_risk, meta={}))


@pytest.mark.parametrize("index", [0, 1], ids=["gate", "calibrated"])
def test_fail_closed_when_the_meta_disagrees_with_the_site_data(site, index):
    meta = copy.deepcopy(site.high_risk.meta)
    meta["gia_training"]["num_images"] = 8
    with pytest.raises(ContentBlockedException, match="num_images=8"):
        _run(_both()[index], site, site.high_risk, _result(site.high_risk, meta=meta))


@pytest.mark.parametrize("index", [0, 1], ids=["gate", "calibrated"])
def test_fail_closed_when_the_attack_raises(site, index, monkeypatch):
    from nvflare_gia.attack import GradientInversionAttack

    def broken(*args, **kwargs):
        raise RuntimeError("attack exploded")

    monkeypatch.setattr(GradientInversionAttack, "reconstruct", broken)
    with pytest.raises(ContentBlockedException, match="attack exploded"):
        _run(_both()[index], site, site.high_risk)
