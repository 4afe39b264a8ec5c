"""``bench defenses --audit-rounds all``: the high-risk site is attacked in every round and the leakage averaged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nvflare_gia.bench import defense_bench
from nvflare_gia.bench.defense_bench import LEAKAGE_KEYS, _mean_leakage, run_defense_benchmark
from nvflare_gia.cli import main
from nvflare_gia.errors import ConfigError


def test_every_round_is_attacked_and_the_last_one_matches_the_default(tmp_path, write_small_npz, monkeypatch):
    data = str(write_small_npz(tmp_path, image_size=16))
    audits = []

    def recording_audit(target, attack, **kwargs):
        record = real_audit(target, attack, **kwargs)
        audits.append((target.round, record))
        return record

    real_audit = defense_bench.audit_update
    monkeypatch.setattr(defense_bench, "audit_update", recording_audit)
    every = run_defense_benchmark(
        quick=True, data=data, json_path=str(tmp_path / "all.json"), rounds=2, attack_iterations=15, defenses=["gaussian"], audit_rounds="all"
    )
    every_audits, audits[:] = list(audits), []
    last = run_defense_benchmark(quick=True, data=data, json_path=str(tmp_path / "last.json"), rounds=2, attack_iterations=15, defenses=["gaussian"])

    assert every["protocol"]["audit_rounds"] == "all" and last["protocol"]["audit_rounds"] == "last"
    assert [round_index for round_index, _ in every_audits] == [0, 1] * len(every["runs"])
    assert [round_index for round_index, _ in audits] == [1] * len(last["runs"])
    for index, (run, last_run) in enumerate(zip(every["runs"], last["runs"])):
        first_round, last_round = every_audits[2 * index][1], every_audits[2 * index + 1][1]
        assert run["audited_rounds"] == 2 and last_run["audited_rounds"] == 1
        for key in LEAKAGE_KEYS:
            assert run[key] == pytest.approx((first_round[f"gia/{key}"] + last_round[f"gia/{key}"]) / 2), key
            # the fixed attack budget makes round 1's audit the same in both runs
            assert last_run[key] == pytest.approx(last_round[f"gia/{key}"]), key
        assert first_round["gia/ssim"] != last_round["gia/ssim"]  # another global model, another update


def test_mean_leakage_leaves_out_blocked_rounds():
    sent = [{"gia/ssim": 0.2, "gia/psnr": 12.0, "gia/mse": 0.05, "gia/rdlv": -0.1, "gia/attacker_accuracy": 1.0, "gia/prior_attacker_accuracy": 1.0},
            {"gia/ssim": 0.4, "gia/psnr": 14.0, "gia/mse": 0.03, "gia/rdlv": 0.3, "gia/attacker_accuracy": 0.0, "gia/prior_attacker_accuracy": 0.0}]
    mean = _mean_leakage(sent)
    assert mean == pytest.approx({"ssim": 0.3, "psnr": 13.0, "mse": 0.04, "rdlv": 0.1, "attacker_accuracy": 0.5, "prior_attacker_accuracy": 0.5})
    assert _mean_leakage([]) == {key: None for key in LEAKAGE_KEYS}  # every high-risk update was blocked
    assert _mean_leakage([{**sent[0], "gia/attacker_accuracy": None}])["attacker_accuracy"] is None
    assert np.isclose(_mean_leakage(sent[:1])["ssim"], 0.2)


@pytest.mark.parametrize("audit_rounds", ["every", "", None, 1, "ALL"])
def test_bad_audit_rounds_fail_before_any_training(audit_rounds, tmp_path):
    with pytest.raises(ConfigError, match=r"audit_rounds must be one of \['last', 'all'\]"):
        run_defense_benchmark(quick=True, data="synthetic", json_path=str(tmp_path / "x.json"), audit_rounds=audit_rounds)
    assert not (tmp_path / "x.json").exists()


def test_cli_audit_rounds_reach_the_protocol_and_a_bad_value_exits_2(tmp_path, write_small_npz):
    path = tmp_path / "x.json"
    data = str(write_small_npz(tmp_path, image_size=16))
    common = ["bench", "defenses", "--quick", "--data", data, "--json", str(path), "--rounds", "1", "--attack-iterations", "5", "--grid", "gaussian:sigma0=0.03"]
    assert main([*common, "--audit-rounds", "all"]) == 0
    result = json.loads(path.read_text())
    assert result["protocol"]["audit_rounds"] == "all" and all(run["audited_rounds"] == 1 for run in result["runs"])
    assert main([*common, "--audit-rounds", "first"]) == 2
