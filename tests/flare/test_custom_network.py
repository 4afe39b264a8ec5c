"""A job's own network, shipped in ``app/custom``: trained by the clients and attacked by the widget
in FLARE's real simulator on the real chest X-rays."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nvflare_gia.data import DataSpec
from nvflare_gia.flare.jobs import SimulatorRun, prepare_job, run_simulator
from nvflare_gia.flare.widget import METRICS_FILE

NETWORK = "spatial_head_net.SpatialHeadCNN"
ATTACK = {"clients": ["site-1"], "networks": [NETWORK], "prior": "flat", "max_seconds": 60.0, "max_iterations": 300, "restarts": 1, "end_run_wait_s": 90.0}


def _run_custom_network_job(root: Path, nih_cxr_path: Path, widget_args: dict) -> SimulatorRun:
    """``fedavg_cxr_audit``, one round, with the persistor, the clients and so the widget on ``NETWORK``."""
    job = prepare_job(
        "fedavg_cxr_audit", root / "job", num_rounds=1, data_spec=DataSpec(source=str(nih_cxr_path)), component_args={"gia_widget": widget_args}
    )
    (job / "app" / "custom").mkdir()
    shutil.copy(Path(__file__).parent / "custom" / "spatial_head_net.py", job / "app" / "custom")
    config_dir = job / "app" / "config"
    server = json.loads((config_dir / "config_fed_server.json").read_text())
    next(c for c in server["components"] if c["id"] == "persistor")["args"]["model"]["path"] = NETWORK
    (config_dir / "config_fed_server.json").write_text(json.dumps(server, indent=4))
    client = json.loads((config_dir / "config_fed_client.json").read_text())
    client["executors"][0]["executor"]["args"]["train_args"] += f" --model {NETWORK}"
    (config_dir / "config_fed_client.json").write_text(json.dumps(client, indent=4))
    return run_simulator(job, root / "ws", timeout_s=600)


@pytest.fixture(scope="module")
def custom_network_run(tmp_path_factory, nih_cxr_path):
    return _run_custom_network_job(tmp_path_factory.mktemp("custom_network"), nih_cxr_path, ATTACK)


def _records(run: SimulatorRun) -> list[dict]:
    return [json.loads(line) for line in (run.server_run_dir / "gia" / METRICS_FILE).read_text().splitlines()]


@pytest.mark.slow
def test_clients_train_and_widget_attacks_the_jobs_own_network(custom_network_run, load_global_model):
    assert custom_network_run.returncode == 0, custom_network_run.log_tail
    # the aggregated model is the job's network: its classifier reads 64 x 4 x 4 pooled features
    assert tuple(load_global_model(custom_network_run.server_run_dir)["classifier.weight"].shape) == (2, 64 * 16)
    records = _records(custom_network_run)
    assert [(r["client"], r["round"]) for r in records] == [("site-1", 0)]
    record = records[0]
    assert record["gia/status"] == "ok", record
    assert record["gia/label_accuracy"] == 1.0
    # the spatial head keeps where features are: 300 iterations from the flat prior gave SSIM 0.616
    # (RDLV +2.17); SmallCNN's update of the same image in the same setting gave 0.268 (+0.38)
    assert record["gia/ssim"] > 0.45 and record["gia/rdlv"] > 1.0, record


@pytest.mark.slow
def test_widget_refuses_a_network_it_does_not_list_and_aggregation_goes_on(tmp_path, nih_cxr_path):
    """The network's name comes in the client's meta: unlisted, the widget must not import it."""
    run = _run_custom_network_job(tmp_path, nih_cxr_path, {**ATTACK, "networks": None})
    assert run.returncode == 0, run.log_tail
    assert "Aggregated 3/3 results" in (run.workspace / "server" / "log.txt").read_text()
    [record] = _records(run)
    assert record["gia/status"] == "failed" and f"trusted networks [], got '{NETWORK}'" in record["reason"], record
