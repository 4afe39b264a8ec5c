"""``run_attack_benchmark``: the JSON layout on a tiny synthetic data file, and a clear error without data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nvflare_gia.bench.attack_bench import run_attack_benchmark
from nvflare_gia.errors import DataError

RUN_KEYS = {
    "model", "batch_size", "seconds", "iterations", "ms_per_iteration", "ms_per_train_step",
    "ssim", "psnr", "mse", "rdlv", "prior_ssim", "label_accuracy", "label_count_accuracy", "prior", "matching_loss",
    "truth_matching_loss",
}


def test_attack_benchmark_writes_one_run_per_batch_size(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    splits = {
        f"{split}_{kind}": value
        for split in ("train", "val", "test")
        for kind, value in (("images", rng.integers(0, 256, (6, 16, 16), dtype=np.uint8)), ("labels", np.array([0, 1, 2, 0, 1, 2])))
    }
    np.savez(data, **splits)
    out = tmp_path / "attack.json"
    result = run_attack_benchmark(quick=True, data=str(data), json_path=str(out), seconds=1.0, device="cpu")
    written = json.loads(out.read_text())
    assert written["runs"] == result["runs"]
    assert [(run["batch_size"], run["prior"]) for run in written["runs"]] == [
        (1, "flat"), (1, "val_mean"), (1, "val_retrieval"), (4, "flat"), (4, "val_mean"),
    ]
    for run in written["runs"]:
        assert RUN_KEYS <= set(run) and run["iterations"] >= 1 and 0.0 <= run["label_accuracy"] <= 1.0
        # the true images reproduce the update; a one-second attack does not get near them
        assert run["truth_matching_loss"] < 1e-3 < run["matching_loss"]
    flat_prior_ssim = {run["batch_size"]: run["prior_ssim"] for run in written["runs"] if run["prior"] == "flat"}
    mean_prior_ssim = {run["batch_size"]: run["prior_ssim"] for run in written["runs"] if run["prior"] == "val_mean"}
    assert flat_prior_ssim != mean_prior_ssim  # RDLV is measured against the prior the attack was given
    # Retrieval's RDLV is measured against the validation mean, the prior the server had before the update.
    retrieval = next(run for run in written["runs"] if run["prior"] == "val_retrieval")
    assert retrieval["prior_ssim"] == mean_prior_ssim[1]


def test_attack_benchmark_names_the_missing_data_file(tmp_path):
    missing = tmp_path / "absent.npz"
    with pytest.raises(DataError, match="absent.npz"):
        run_attack_benchmark(quick=True, data=str(missing), json_path=str(tmp_path / "x.json"), seconds=1.0)
