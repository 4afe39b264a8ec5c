"""``bench defenses --attack-iterations``: a fixed attack budget, so leakage numbers repeat exactly."""

from __future__ import annotations

import json

import pytest

from nvflare_gia.bench.defense_bench import RUN_KEYS, run_defense_benchmark
from nvflare_gia.cli import main
from nvflare_gia.errors import ConfigError


def test_fixed_iteration_budget_gives_the_same_leakage_on_a_rerun(tmp_path, write_small_npz):
    data = str(write_small_npz(tmp_path, image_size=16))
    results = [
        run_defense_benchmark(quick=True, data=data, json_path=str(tmp_path / f"run{i}.json"), rounds=1, attack_iterations=20, defenses=["gaussian"])
        for i in range(2)
    ]
    first, second = ([{key: run[key] for key in RUN_KEYS if key != "filter_seconds"} for run in result["runs"]] for result in results)
    assert first == second
    assert all(run["ssim"] is not None for run in first)
    assert results[0]["protocol"]["attack_iterations"] == 20 and results[0]["protocol"]["attack_seconds"] is None


def test_wall_clock_budget_is_recorded_in_the_protocol(tmp_path, write_small_npz):
    result = run_defense_benchmark(
        quick=True, data=str(write_small_npz(tmp_path, image_size=16)), json_path=str(tmp_path / "x.json"), rounds=1, attack_seconds=1, defenses=["gaussian"]
    )
    assert result["protocol"]["attack_seconds"] == 1 and result["protocol"]["attack_iterations"] is None


@pytest.mark.parametrize("iterations", [0, -5, 2.5, True, "100"])
def test_bad_attack_iterations_fail_before_any_training(iterations, tmp_path):
    with pytest.raises(ConfigError, match=r"attack_iterations must be an integer >= 1 or None"):
        run_defense_benchmark(quick=True, data="synthetic", json_path=str(tmp_path / "x.json"), attack_iterations=iterations)
    assert not (tmp_path / "x.json").exists()


def test_both_attack_budgets_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"give attack_seconds or attack_iterations, not both"):
        run_defense_benchmark(quick=True, data="synthetic", json_path=str(tmp_path / "x.json"), attack_seconds=5, attack_iterations=100)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "defenses", "--json", str(tmp_path / "x.json"), "--attack-seconds", "5", "--attack-iterations", "100"])
    assert exit_info.value.code == 2


def test_cli_attack_iterations_reach_the_protocol(tmp_path, write_small_npz):
    path = tmp_path / "fixed.json"
    argv = ["bench", "defenses", "--quick", "--data", str(write_small_npz(tmp_path, image_size=16)), "--json", str(path),
            "--rounds", "1", "--attack-iterations", "10", "--grid", "gaussian:sigma0=0.03"]
    assert main(argv) == 0
    assert json.loads(path.read_text())["protocol"]["attack_iterations"] == 10
