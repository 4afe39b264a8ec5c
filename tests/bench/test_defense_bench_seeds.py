"""``bench defenses --seeds N``: the protocol repeated with N seeds, reported as means."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from nvflare_gia.bench.defense_bench import (
    HIGH_RISK_SITE,
    LEARNED_MARGIN,
    RUN_KEYS,
    SITES,
    _balanced_attacker_accuracy,
    _learning_check,
    _mean_run,
    run_defense_benchmark,
)
from nvflare_gia.data import DataSpec, load_site_data, load_test_data
from nvflare_gia.errors import ConfigError

NUMBERS = RUN_KEYS[2:]


def test_bench_with_two_seeds_reports_the_mean_of_two_real_runs(tmp_path, write_small_npz):
    path = tmp_path / "defenses.json"
    result = run_defense_benchmark(
        quick=True, data=str(write_small_npz(tmp_path, image_size=16)), json_path=str(path), rounds=1, attack_seconds=1, defenses=["gaussian"], seed=3, seeds=2
    )
    assert result["protocol"]["seed"] == 3 and result["protocol"]["seeds"] == 2
    assert [run["defense"] for run in result["runs"]] == ["none", "gaussian", "gaussian"]
    for run in result["runs"]:
        per_seed = run["per_seed"]
        assert [single["seed"] for single in per_seed] == [3, 4]
        assert all(single["defense"] == run["defense"] and single["params"] == run["params"] for single in per_seed)
        for key in NUMBERS:
            values = [single[key] for single in per_seed]
            assert run[key] == pytest.approx(np.mean(values)), key
            assert run["stderr"][key] == pytest.approx(abs(values[0] - values[1]) / 2), key  # std(ddof=1)/sqrt(2) of two values
        labels = [load_site_data(DataSpec(source=str(tmp_path / "small.npz"), site_names=SITES, seed=s), HIGH_RISK_SITE).train_labels for s in (3, 4)]
        assert [single["attacked_label"] for single in per_seed] == [int(label[0]) for label in labels]
        assert run["balanced_attacker_accuracy"] == pytest.approx(_balanced_attacker_accuracy(per_seed))
    # each seed partitions the data anew, so the attacked high-risk image (and its leakage) differs
    undefended = result["runs"][0]["per_seed"]
    assert undefended[0]["ssim"] != undefended[1]["ssim"]
    baseline = result["runs"][0]["accuracy"]
    assert all(pick["accuracy"] >= baseline - 0.01 for pick in result["equal_utility"].values())
    assert result["protocol"]["model_learned"] is (baseline >= result["protocol"]["majority_accuracy"] + LEARNED_MARGIN)
    with open(path.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [tuple(row) for row in rows] == [RUN_KEYS] * 3
    assert [float(row["accuracy"]) for row in rows] == pytest.approx([run["accuracy"] for run in result["runs"]])


def test_mean_run_leaves_out_blocked_seeds():
    blocked = {"defense": "calibrated_gaussian", "params": {"target": 0.0}, **{key: 0.5 for key in NUMBERS}, "seed": 0, "audited_rounds": 0}
    blocked.update(ssim=None, psnr=None, mse=None, rdlv=None, attacker_accuracy=None, prior_attacker_accuracy=None)
    sent = {**blocked, "ssim": 0.2, "psnr": 12.0, "mse": 0.05, "rdlv": -0.1, "attacker_accuracy": 1.0, "accuracy": 0.7, "seed": 1, "audited_rounds": 1}
    mean = _mean_run([blocked, sent])
    assert mean["audited_rounds"] == 1
    assert mean["accuracy"] == pytest.approx(0.6) and mean["ssim"] == 0.2 and mean["attacker_accuracy"] == 1.0
    assert mean["stderr"]["accuracy"] == pytest.approx(0.1) and mean["stderr"]["ssim"] is None  # one seed sent an update
    assert _mean_run([blocked, blocked])["ssim"] is None


@pytest.mark.parametrize("seeds", [0, -1, 1.5, True, "2"])
def test_bench_rejects_bad_seeds(seeds, tmp_path):
    with pytest.raises(ConfigError, match=r"seeds must be an integer >= 1"):
        run_defense_benchmark(quick=True, data="synthetic", json_path=str(tmp_path / "x.json"), seeds=seeds)


@pytest.mark.parametrize(
    ("above_majority", "learned"),
    [(0.2, True), (LEARNED_MARGIN + 0.01, True), (LEARNED_MARGIN - 0.01, False), (0.0, False), (None, False)],
)
def test_learning_check_compares_the_undefended_accuracy_with_the_majority_class(above_majority, learned, tmp_path, write_small_npz, caplog):
    spec = DataSpec(source=str(write_small_npz(tmp_path)), site_names=SITES)
    _, test_labels = load_test_data(spec)
    majority = np.bincount(test_labels).max() / len(test_labels)
    runs = [{"defense": "gaussian", "accuracy": 0.9}] + ([] if above_majority is None else [{"defense": "none", "accuracy": majority + above_majority}])
    with caplog.at_level("WARNING", logger="nvflare_gia.bench.defense_bench"):
        check = _learning_check(runs, spec)
    assert check == {"majority_accuracy": pytest.approx(majority), "model_learned": learned}
    assert ("did not learn" in caplog.text) is (not learned)


def test_balanced_attacker_accuracy_weighs_each_class_of_attacked_image_equally():
    # a classifier that calls every reconstruction class 1: right on the three class-1 seeds, wrong on the class-0 one
    runs = [{"attacker_accuracy": acc, "attacked_label": label} for acc, label in ((1.0, 1), (1.0, 1), (1.0, 1), (0.0, 0))]
    assert np.mean([r["attacker_accuracy"] for r in runs]) == 0.75
    assert _balanced_attacker_accuracy(runs) == pytest.approx(0.5)
    runs += [{"attacker_accuracy": 0.6, "attacked_label": 0}, {"attacker_accuracy": None, "attacked_label": 0}, {"attacker_accuracy": 1.0, "attacked_label": None}]
    assert _balanced_attacker_accuracy(runs) == pytest.approx((1.0 + 0.3) / 2)  # blocked and unlabelled seeds left out
    assert _balanced_attacker_accuracy([{"attacker_accuracy": None, "attacked_label": 1}]) is None
    assert _mean_run([{**r, "defense": "none", "params": {}, **{k: 0.5 for k in NUMBERS if k != "attacker_accuracy"}, "audited_rounds": 1}
                      for r in runs[:4]])["balanced_attacker_accuracy"] == pytest.approx(0.5)
