"""The FedAvg job in FLARE's real simulator on the real chest X-rays."""

from __future__ import annotations

import pytest
import torch
from nvflare_gia.flare.jobs import read_tb_scalars
from nvflare_gia.models import SmallCNN

pytestmark = pytest.mark.slow


def test_fedavg_job_completes_in_simulator(fedavg_run):
    assert fedavg_run.returncode == 0, fedavg_run.log_tail
    server_log = (fedavg_run.workspace / "server" / "log.txt").read_text()
    assert "Finished FedAvg." in server_log


def test_fedavg_job_aggregates_every_site_in_both_rounds(fedavg_run):
    server_log = (fedavg_run.workspace / "server" / "log.txt").read_text()
    assert server_log.count("Aggregated 3/3 results") == 2
    assert "Round 1 started." in server_log


def test_fedavg_job_changes_the_global_model(fedavg_run, load_global_model):
    initial = SmallCNN(init_seed=0).state_dict()
    final = load_global_model(fedavg_run.server_run_dir)
    assert set(final) == set(initial)
    for key in ("features.0.weight", "classifier.weight", "features.1.running_mean"):
        delta = torch.as_tensor(final[key]).float() - initial[key].float()
        assert delta.abs().max() > 1e-6, key


def test_fedavg_job_streams_accuracy_and_f1_per_site_and_round(fedavg_run):
    scalars = read_tb_scalars(fedavg_run.server_run_dir)
    for site in ("site-1", "site-2", "site-3"):
        accuracy = dict(scalars.get(f"{site}/accuracy", []))
        assert sorted(accuracy) == [0, 1], sorted(scalars)
        assert all(0.0 <= value <= 1.0 for value in accuracy.values())
        assert f"{site}/f1" in scalars
