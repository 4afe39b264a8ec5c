"""``bench attack``: data too small for its plan and a bad thread count are refused before any attack runs;
the attacks and the timed training steps run on the requested threads, restarts side by side on the cores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nvflare_gia.attack import AttackConfig
from nvflare_gia.bench import attack_bench
from nvflare_gia.errors import ConfigError, DataError


def _write_data(path, count: int) -> None:
    rng = np.random.default_rng(0)
    np.savez(path, **{
        f"{split}_{kind}": value
        for split in ("train", "val", "test")
        for kind, value in (("images", rng.integers(0, 256, (count, 16, 16), dtype=np.uint8)), ("labels", np.arange(count) % 2))
    })


def test_attack_benchmark_refuses_too_few_images_before_attacking(tmp_path, monkeypatch):
    data = tmp_path / "two.npz"
    _write_data(data, 2)
    attacked = []
    monkeypatch.setattr(attack_bench, "_one_run", lambda *args, **kwargs: attacked.append(args) or pytest.fail("attacked"))
    with pytest.raises(DataError, match=r"2 training images, fewer than batch 4"):
        attack_bench.run_attack_benchmark(quick=True, data=str(data), json_path=str(tmp_path / "x.json"), seconds=1.0, device="cpu")
    assert attacked == []


@pytest.mark.parametrize("threads", [0, 1.5, True, "2"])
def test_attack_benchmark_refuses_a_bad_thread_count(tmp_path, threads):
    with pytest.raises(ConfigError, match=r"threads must be an integer >= 1"):
        attack_bench.run_attack_benchmark(quick=True, data=None, json_path=str(tmp_path / "x.json"), threads=threads)
    assert not (tmp_path / "x.json").exists()


def test_attack_benchmark_times_and_attacks_on_the_requested_threads_and_restores_them(tmp_path, monkeypatch):
    data = tmp_path / "four.npz"
    _write_data(data, 4)
    seen = []

    def fake_run(model_name, images, labels, *args):
        seen.append(torch.get_num_threads())
        return dict.fromkeys(("ssim", "prior_ssim", "rdlv", "psnr", "label_accuracy", "label_count_accuracy", "matching_loss",
                              "truth_matching_loss", "ms_per_iteration", "ms_per_train_step"), 0.0) | {"iterations": 0}

    monkeypatch.setattr(attack_bench, "_one_run", fake_run)
    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    result = attack_bench.run_attack_benchmark(quick=True, data=str(data), json_path=str(tmp_path / "x.json"), device="cpu", threads=wanted)
    assert seen == [wanted] * 5 and result["protocol"]["threads"] == wanted
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("parallel_restarts", [0, 2.0, False])
def test_attack_benchmark_refuses_a_bad_parallel_restart_count(tmp_path, parallel_restarts):
    with pytest.raises(ConfigError, match=r"parallel_restarts must be an integer >= 1 or None"):
        attack_bench.run_attack_benchmark(quick=True, data=None, json_path=str(tmp_path / "x.json"), parallel_restarts=parallel_restarts)
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("requested", [None, 3])
def test_attack_benchmark_runs_restarts_side_by_side_on_the_cpu_cores(tmp_path, monkeypatch, requested):
    data = tmp_path / "four.npz"
    _write_data(data, 4)
    seen = []

    def fake_run(*args):
        seen.append(args[-1])
        return dict.fromkeys(("ssim", "prior_ssim", "rdlv", "psnr", "label_accuracy", "label_count_accuracy", "matching_loss",
                              "truth_matching_loss", "ms_per_iteration", "ms_per_train_step"), 0.0) | {"iterations": 0}

    monkeypatch.setattr(attack_bench, "_one_run", fake_run)
    monkeypatch.setattr(attack_bench.os, "sched_getaffinity", lambda pid: set(range(16)))
    result = attack_bench.run_attack_benchmark(
        quick=True, data=str(data), json_path=str(tmp_path / "x.json"), device="cpu", parallel_restarts=requested
    )
    expected = AttackConfig.restarts if requested is None else requested  # 16 cores: one per restart
    assert seen == [expected] * 5 and result["protocol"]["parallel_restarts"] == expected


def test_attack_benchmark_runs_its_protocol_on_a_network_of_ones_own(tmp_path, own_network, one_torch_thread):
    data = tmp_path / "four.npz"
    _write_data(data, 4)
    network = own_network
    result = attack_bench.run_attack_benchmark(quick=True, data=str(data), json_path=str(tmp_path / "x.json"), seconds=0.5, device="cpu", model=network)
    runs = result["runs"]
    assert [(r["model"], r["batch_size"], r["prior"]) for r in runs] == [
        (network, 1, "flat"), (network, 1, "val_mean"), (network, 1, "val_retrieval"), (network, 4, "flat"), (network, 4, "val_mean")
    ]
    assert all(r["iterations"] > 0 and np.isfinite(r["ssim"]) for r in runs)


@pytest.mark.parametrize("model, match", [
    ("small_cn", r"model must be one of \['small_cnn', 'densenet121', 'resnet18'\] or the dotted path .*Did you mean 'small_cnn'"),
    ("no_such_module.Net", r"model 'no_such_module.Net': module 'no_such_module' does not import"),
])
def test_attack_benchmark_refuses_an_unknown_network_before_attacking(tmp_path, monkeypatch, model, match):
    monkeypatch.setattr(attack_bench, "_one_run", lambda *args, **kwargs: pytest.fail("attacked"))
    with pytest.raises(ConfigError, match=match):
        attack_bench.run_attack_benchmark(quick=True, data=None, json_path=str(tmp_path / "x.json"), model=model)
