"""``bench defenses`` runs the calibrated defenses with the benchmark's self-audit budget."""

from __future__ import annotations

import csv
import json

import pytest

from nvflare_gia.bench.defense_bench import (
    BENCH_SELF_AUDIT,
    FULL_GRID,
    OPT_IN,
    QUICK_GRID,
    RUN_KEYS,
    build_defense,
    equal_utility,
    run_defense_benchmark,
)
from nvflare_gia.defenses.calibrated import CalibratedDefense


@pytest.mark.parametrize(
    ("name", "wrapped", "strength"),
    [("calibrated_gaussian", "gaussian", "sigma0"), ("calibrated_shadow", "shadow", "budget"), ("calibrated_latent", "latent", "epsilon")],
)
def test_calibrated_defenses_build_with_the_bench_self_audit_budget(name, wrapped, strength):
    defense = build_defense(name, {"target": 0.1}, seed=3)
    assert isinstance(defense, CalibratedDefense) and defense.strength_name == strength
    config = defense.config
    assert config.defense == wrapped and config.target == 0.1 and config.seed == 3
    for key, value in BENCH_SELF_AUDIT.items():
        assert getattr(config, key) == value, key


def test_grids_list_calibrated_targets_weakest_first():
    for grid in (QUICK_GRID, FULL_GRID):
        for name in ("calibrated_gaussian", "calibrated_shadow", "calibrated_latent"):
            targets = [params["target"] for params in grid[name]]
            assert targets == sorted(targets, reverse=True)
    assert len(QUICK_GRID["calibrated_gaussian"]) == 1 and len(FULL_GRID["calibrated_gaussian"]) == 2


def test_equal_utility_includes_calibrated_defenses():
    runs = [
        {"defense": "none", "params": {}, "accuracy": 0.80},
        {"defense": "calibrated_gaussian", "params": {"target": 0.1}, "accuracy": 0.795},
        {"defense": "calibrated_gaussian", "params": {"target": 0.0}, "accuracy": 0.792},
        {"defense": "calibrated_shadow", "params": {"target": 0.0}, "accuracy": 0.70},
    ]
    picks = equal_utility(runs)
    assert picks["calibrated_gaussian"]["params"] == {"target": 0.0}
    assert "calibrated_shadow" not in picks


def test_bench_runs_calibrated_gaussian_and_reports_the_run_keys(tmp_path, write_small_npz):
    """One round on a small synthetic cut (16×16 images keep the audits short), next to the fixed Gaussian."""
    path = tmp_path / "defenses.json"
    result = run_defense_benchmark(
        quick=True, data=str(write_small_npz(tmp_path, image_size=16)), json_path=str(path), rounds=1, attack_seconds=1, defenses=["gaussian", "calibrated_gaussian"]
    )
    assert [run["defense"] for run in result["runs"]] == ["none", "gaussian", "gaussian", "calibrated_gaussian"]
    for run in result["runs"]:
        assert set(run) == {*RUN_KEYS, "audited_rounds", "attacked_label"}
        assert run["attacked_label"] in (0, 1)  # the 1-image high-risk site's class
        assert run["audited_rounds"] == (0 if run["ssim"] is None else 1)  # the last round, unless it was blocked
    calibrated = result["runs"][-1]
    assert calibrated["params"] == {"target": 0.0} and calibrated["filter_seconds"] > 0
    assert result["protocol"]["self_audit"] == BENCH_SELF_AUDIT
    assert json.loads(path.read_text())["runs"][-1]["defense"] == "calibrated_gaussian"
    with open(path.with_suffix(".csv"), newline="") as f:
        assert [row["defense"] for row in csv.DictReader(f)] == ["none", "gaussian", "gaussian", "calibrated_gaussian"]


def test_calibrated_latent_runs_only_when_named(tmp_path, write_small_npz):
    assert OPT_IN == {"calibrated_latent"} and OPT_IN <= set(QUICK_GRID)
    data = str(write_small_npz(tmp_path, image_size=16))
    named = [
        run_defense_benchmark(quick=True, data=data, json_path=str(tmp_path / "named.json"), rounds=1, attack_iterations=5, defenses=["calibrated_latent"]),
        run_defense_benchmark(
            quick=True, data=data, json_path=str(tmp_path / "grid.json"), rounds=1, attack_iterations=5, grid={"calibrated_latent": [{"target": 0.1}]}
        ),
    ]
    assert [(run["defense"], run["params"]) for run in named[0]["runs"]] == [("none", {}), ("calibrated_latent", {"target": 0.0})]
    assert [(run["defense"], run["params"]) for run in named[1]["runs"]] == [("none", {}), ("calibrated_latent", {"target": 0.1})]
    assert named[0]["runs"][1]["filter_seconds"] > 0 and named[0]["protocol"]["self_audit"] == BENCH_SELF_AUDIT


def test_default_selection_leaves_out_opt_in_defenses(tmp_path, monkeypatch):
    """Without defenses or grid every grid defense runs except the opt-in ones (no training: the runs are recorded)."""
    import nvflare_gia.bench.defense_bench as bench

    ran = []

    def record(name, params, **_):
        ran.append(name)
        return {**{key: 0.5 for key in RUN_KEYS}, "defense": name, "params": dict(params)}

    monkeypatch.setattr(bench, "_run_one", record)
    monkeypatch.setattr(bench, "_reference_classifier", lambda *args, **kwargs: None)
    run_defense_benchmark(quick=True, data="synthetic", json_path=str(tmp_path / "x.json"), rounds=1, attack_iterations=1)
    assert set(ran) == set(QUICK_GRID) - OPT_IN
    assert len(ran) == sum(len(settings) for name, settings in QUICK_GRID.items() if name not in OPT_IN)


def test_a_defense_that_refuses_an_update_blocks_that_site_and_the_benchmark_goes_on(tmp_path, write_small_npz, monkeypatch):
    """A filter that raises ``DataError`` fails closed in FLARE (the site sends nothing that round),
    so the benchmark counts it as blocked instead of stopping (as ``LatentPerturbation`` did once
    when no shift kept the task loss within its bound)."""
    import nvflare_gia.bench.defense_bench as bench
    from nvflare_gia.errors import DataError

    class Refusing:
        def apply(self, update, **kwargs):
            raise DataError("LatentPerturbation: no latent shift keeps the task loss within task_loss_bound")

    monkeypatch.setattr(bench, "build_defense", lambda name, params, seed: Refusing())
    result = run_defense_benchmark(
        quick=True, data=str(write_small_npz(tmp_path, image_size=16)), json_path=str(tmp_path / "d.json"), rounds=1, attack_iterations=5,
        grid={"latent": [{"epsilon": 1.0}]},
    )
    none, refused = result["runs"]
    assert refused["defense"] == "latent" and refused["audited_rounds"] == 0 and refused["ssim"] is None
    assert none["audited_rounds"] == 1 and none["ssim"] is not None and refused["accuracy"] is not None
