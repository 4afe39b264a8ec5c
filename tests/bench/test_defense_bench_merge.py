"""``bench merge``: the seeds of several ``bench defenses`` outputs pooled into one, and the
seed-by-seed (paired) differences from no defense."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from nvflare_gia.bench.defense_bench import (
    PAIRED_KEYS,
    RUN_KEYS,
    _paired_differences,
    equal_utility,
    merge_defense_benchmarks,
    run_defense_benchmark,
)
from nvflare_gia.cli import main
from nvflare_gia.errors import ConfigError, DataError


def _run(defense: str, accuracy: float, ssim: float | None, *, params: dict | None = None, seconds: float = 0.1) -> dict:
    return {
        "defense": defense, "params": params or {}, "accuracy": accuracy, "f1": accuracy, "ssim": ssim, "psnr": 15.0, "mse": 0.02,
        "rdlv": 0.1, "attacker_accuracy": 1.0, "prior_attacker_accuracy": 0.0, "filter_seconds": seconds, "audited_rounds": 5,
    }


def _write_output(path, seed: int, runs: list[dict], **protocol) -> str:
    content = {
        "runs": runs, "equal_utility": {},
        "protocol": {
            "data": "pneumoniamnist.npz", "rounds": 5, "seed": seed, "seeds": 1, "quick": True, "attack_seconds": None,
            "attack_iterations": 1400, "audit_rounds": "all", "majority_accuracy": 0.625, "model_learned": True, **protocol,
        },
    }
    path.write_text(json.dumps(content))
    return str(path)


def _without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "filter_seconds"}


def test_merging_two_single_seed_runs_gives_the_two_seed_run(tmp_path, write_small_npz):
    data = str(write_small_npz(tmp_path, image_size=16))
    common = dict(quick=True, data=data, rounds=1, attack_iterations=3, defenses=["gaussian"])
    first = run_defense_benchmark(json_path=str(tmp_path / "a.json"), seed=3, seeds=1, **common)
    run_defense_benchmark(json_path=str(tmp_path / "b.json"), seed=4, seeds=1, **common)
    together = run_defense_benchmark(json_path=str(tmp_path / "ab.json"), seed=3, seeds=2, **common)

    merged = merge_defense_benchmarks([tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "merged.json")

    assert json.loads((tmp_path / "merged.json").read_text()) == merged
    assert merged["protocol"]["seed_list"] == [3, 4] and merged["protocol"]["seeds"] == 2 and merged["protocol"]["seed"] == 3
    assert merged["protocol"]["merged_from"] == [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    assert merged["protocol"]["majority_accuracy"] == first["protocol"]["majority_accuracy"]
    assert [(r["defense"], r["params"]) for r in merged["runs"]] == [(r["defense"], r["params"]) for r in together["runs"]]
    for got, want in zip(merged["runs"], together["runs"]):
        assert [_without_timing(s) for s in got["per_seed"]] == [_without_timing(s) for s in want["per_seed"]]
        for key in RUN_KEYS[2:]:
            if key != "filter_seconds":
                assert got[key] == pytest.approx(want[key], nan_ok=True), key
                assert got["stderr"][key] == pytest.approx(want["stderr"][key], nan_ok=True), key
        assert got.get("vs_none") == want.get("vs_none")
    assert sorted(merged["equal_utility"]) == sorted(together["equal_utility"])
    with open(tmp_path / "merged.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(row["accuracy"]) for row in rows] == pytest.approx([r["accuracy"] for r in merged["runs"]])


def test_a_two_seed_run_has_paired_differences_from_no_defense(tmp_path, write_small_npz):
    result = run_defense_benchmark(
        quick=True, data=str(write_small_npz(tmp_path, image_size=16)), json_path=str(tmp_path / "x.json"), rounds=1,
        attack_iterations=3, defenses=["gaussian"], seed=0, seeds=2,
    )
    undefended = {s["seed"]: s for s in result["runs"][0]["per_seed"]}
    assert "vs_none" not in result["runs"][0]
    for run in result["runs"][1:]:
        differences = [s["accuracy"] - undefended[s["seed"]]["accuracy"] for s in run["per_seed"]]
        assert run["vs_none"]["accuracy"]["mean"] == pytest.approx(np.mean(differences))
        assert run["vs_none"]["accuracy"]["stderr"] == pytest.approx(abs(differences[0] - differences[1]) / 2)
        assert run["vs_none"]["accuracy"]["n"] == 2 and set(run["vs_none"]) == set(PAIRED_KEYS)


def test_paired_differences_skip_blocked_and_unshared_seeds():
    undefended = [{**_run("none", a, s), "seed": seed} for seed, a, s in ((0, 0.90, 0.40), (1, 0.60, 0.30), (2, 0.80, 0.50))]
    defended = [
        {**_run("gaussian", 0.88, 0.20), "seed": 0},
        {**_run("gaussian", 0.62, None), "seed": 1},  # its high-risk update was blocked: no leakage numbers
        {**_run("gaussian", 0.85, 0.10), "seed": 7},  # no undefended run on seed 7: not paired
    ]
    paired = _paired_differences(defended, undefended)
    assert paired["accuracy"]["n"] == 2
    assert paired["accuracy"]["mean"] == pytest.approx((-0.02 + 0.02) / 2)
    assert paired["accuracy"]["stderr"] == pytest.approx(np.std([-0.02, 0.02], ddof=1) / np.sqrt(2))
    assert paired["ssim"] == {"mean": pytest.approx(-0.20), "stderr": None, "n": 1}


def test_equal_utility_compares_seed_by_seed_when_a_setting_lacks_seeds():
    # No defense: 0.90 on seed 0, 0.60 on seed 1 (a slow seed). A defense run on seed 0 only at 0.88
    # beats the undefended mean (0.75) but is 2 points worse on the seed it shares.
    none = {**_run("none", 0.75, 0.4), "per_seed": []}
    worse = {**_run("gaussian", 0.88, 0.2), "vs_none": {"accuracy": {"mean": -0.02, "stderr": None, "n": 1}}}
    same = {**_run("shadow", 0.70, 0.2), "vs_none": {"accuracy": {"mean": -0.005, "stderr": None, "n": 1}}}
    picks = equal_utility([none, worse, same])
    assert sorted(picks) == ["none", "shadow"]
    assert sorted(equal_utility([none, _run("gaussian", 0.745, 0.2), _run("shadow", 0.73, 0.2)])) == ["gaussian", "none"]


def test_merge_pools_settings_with_their_own_seeds_and_keeps_identical_reruns(tmp_path):
    a = _write_output(tmp_path / "a.json", 0, [_run("none", 0.9, 0.4), _run("gaussian", 0.9, 0.3, params={"sigma0": 0.01})])
    b = _write_output(tmp_path / "b.json", 1, [_run("none", 0.6, 0.5), _run("latent", 0.595, 0.1)])
    rerun = _write_output(tmp_path / "c.json", 1, [_run("none", 0.6, 0.5, seconds=9.0)])  # seed 1 again: only the timing differs
    merged = merge_defense_benchmarks([a, b, rerun], tmp_path / "m.json")
    runs = {r["defense"]: r for r in merged["runs"]}
    assert [s["seed"] for s in runs["none"]["per_seed"]] == [0, 1] and runs["none"]["accuracy"] == pytest.approx(0.75)
    assert [s["seed"] for s in runs["gaussian"]["per_seed"]] == [0] and runs["gaussian"]["stderr"]["accuracy"] is None
    assert runs["latent"]["vs_none"]["accuracy"] == {"mean": pytest.approx(-0.005), "stderr": None, "n": 1}
    assert sorted(merged["equal_utility"]) == ["gaussian", "latent", "none"]
    assert merged["protocol"]["seed_list"] == [0, 1] and merged["protocol"]["model_learned"] is True


def test_merge_reads_files_written_before_prior_attacker_accuracy(tmp_path):
    old = _run("none", 0.9, 0.4)
    del old["prior_attacker_accuracy"]
    a = _write_output(tmp_path / "a.json", 0, [old])
    b = _write_output(tmp_path / "b.json", 1, [_run("none", 0.8, 0.3)])
    run = merge_defense_benchmarks([a, b], tmp_path / "m.json")["runs"][0]
    assert run["per_seed"][0]["prior_attacker_accuracy"] is None and run["prior_attacker_accuracy"] == 0.0


def test_merge_refuses_different_protocols_naming_the_entry(tmp_path):
    a = _write_output(tmp_path / "a.json", 0, [_run("none", 0.9, 0.4)])
    b = _write_output(tmp_path / "b.json", 1, [_run("none", 0.8, 0.3)], attack_iterations=300)
    with pytest.raises(DataError, match=r"attack_iterations=300 .* has 1400; only runs of one protocol"):
        merge_defense_benchmarks([a, b], tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_merge_refuses_one_seed_with_two_different_results(tmp_path):
    a = _write_output(tmp_path / "a.json", 0, [_run("none", 0.9, 0.4)])
    b = _write_output(tmp_path / "b.json", 0, [_run("none", 0.9, 0.35)])
    with pytest.raises(DataError, match=r"none \{\} seed 0 appears twice with different results"):
        merge_defense_benchmarks([a, b], tmp_path / "m.json")


def test_merge_refuses_bad_inputs(tmp_path):
    a = _write_output(tmp_path / "a.json", 0, [_run("none", 0.9, 0.4)])
    with pytest.raises(ConfigError, match=r"at least two JSON files, got 1"):
        merge_defense_benchmarks([a], tmp_path / "m.json")
    with pytest.raises(DataError, match=r"inputs must be an existing JSON file"):
        merge_defense_benchmarks([a, tmp_path / "missing.json"], tmp_path / "m.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"is not valid JSON"):
        merge_defense_benchmarks([a, tmp_path / "bad.json"], tmp_path / "m.json")
    (tmp_path / "overhead.json").write_text(json.dumps({"overhead": [{"filter": "gaussian", "parameters": 1, "seconds": 0.1}]}))
    with pytest.raises(DataError, match=r"is not a `bench defenses` output"):
        merge_defense_benchmarks([a, tmp_path / "overhead.json"], tmp_path / "m.json")


def test_cli_merge_writes_the_output_and_exits_2_on_a_bad_input(tmp_path, capsys, caplog):
    a = _write_output(tmp_path / "a.json", 0, [_run("none", 0.9, 0.4)])
    b = _write_output(tmp_path / "b.json", 1, [_run("none", 0.8, 0.3)])
    assert main(["bench", "merge", a, b, "--json", str(tmp_path / "m.json")]) == 0
    assert "merged seeds [0, 1] of 2 files" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["runs"][0]["accuracy"] == pytest.approx(0.85)
    c = _write_output(tmp_path / "c.json", 2, [_run("none", 0.8, 0.3)], rounds=15)
    assert main(["bench", "merge", a, c, "--json", str(tmp_path / "n.json")]) == 2
    assert "rounds=15" in caplog.text and not (tmp_path / "n.json").exists()


def test_merge_pools_runs_that_name_one_data_file_by_different_paths(tmp_path, monkeypatch):
    """A run records the data path as given (relative to where it ran) or, since, resolved: both name
    one file, so their seeds pool; another file does not."""
    (tmp_path / "data").mkdir()
    for name in ("pneumoniamnist.npz", "other.npz"):
        (tmp_path / "data" / name).write_bytes(b"npz")
    monkeypatch.chdir(tmp_path / "data")
    first = _write_output(tmp_path / "a.json", 0, [_run("none", 0.8, 0.5)], data="pneumoniamnist.npz")
    second = _write_output(tmp_path / "b.json", 1, [_run("none", 0.7, 0.4)], data=str(tmp_path / "data" / "pneumoniamnist.npz"))
    other = _write_output(tmp_path / "c.json", 2, [_run("none", 0.7, 0.4)], data=str(tmp_path / "data" / "other.npz"))
    merged = merge_defense_benchmarks([first, second], tmp_path / "ab.json")
    assert merged["protocol"]["seed_list"] == [0, 1] and merged["protocol"]["data"] == "pneumoniamnist.npz"
    with pytest.raises(DataError, match=r"protocol data=.*other.npz' but .*a.json' has 'pneumoniamnist.npz'"):
        merge_defense_benchmarks([first, other], tmp_path / "ac.json")


def test_bench_records_the_data_file_it_read_by_its_absolute_path(tmp_path, write_small_npz, monkeypatch):
    path = write_small_npz(tmp_path, image_size=16)
    monkeypatch.chdir(path.parent)
    result = run_defense_benchmark(quick=True, data=path.name, json_path=str(tmp_path / "r.json"), rounds=1, attack_iterations=2, defenses=["gaussian"], grid={"gaussian": [{"sigma0": 0.1}]})
    assert result["protocol"]["data"] == str(path.resolve())
