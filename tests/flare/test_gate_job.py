"""``jobs/fedavg_cxr_gate`` in FLARE's simulator: a blocked update never reaches the server, and the
round goes on with the other sites.

The gate audits only the 1-image site (``max_images=1``) with a threshold no update can meet, so the
block is certain; every other site passes unaudited. What is tested is FLARE's side: the client's
result filter raises, the client replies ``TASK_RESULT_FILTER_ERROR``, FedAvg (``ignore_result_error``)
aggregates the others, and the server's attack widget never sees the blocked site's update (it records the site as missing).
"""

from __future__ import annotations

import json

import pytest
import torch

from nvflare_gia.data import DataSpec
from nvflare_gia.flare.jobs import prepare_job, run_simulator
from nvflare_gia.flare.widget import METRICS_FILE
from nvflare_gia.models import SmallCNN

HIGH_RISK_SITE = "site-1"
GATE = {"threshold": -50.0, "max_images": 1, "max_seconds": None, "max_iterations": 60, "restarts": 1, "confirmations": 0}
WIDGET = {"clients": ["site-1", "site-2"], "max_seconds": 600.0, "max_iterations": 100, "restarts": 1, "seed": 0, "end_run_wait_s": 600.0}


@pytest.mark.slow
def test_gate_job_blocks_the_high_risk_update_and_fedavg_aggregates_the_others(tmp_path, nih_cxr_path, load_global_model):
    job = prepare_job(
        "fedavg_cxr_gate", tmp_path / "job", num_rounds=1, data_spec=DataSpec(source=str(nih_cxr_path), max_train_images=40),
        component_args={"gia_widget": WIDGET},
    )
    config_path = job / "app" / "config" / "config_fed_client.json"
    config = json.loads(config_path.read_text())
    noise, gate = config["task_result_filters"][0]["filters"]
    assert gate["path"].endswith("LeakageGateFilter")
    noise["args"]["seed"] = 0
    gate["args"].update(GATE)
    config_path.write_text(json.dumps(config, indent=4))

    run = run_simulator(job, tmp_path / "ws", timeout_s=900)

    assert run.returncode == 0, run.log_tail
    log = (tmp_path / "ws.log").read_text(encoding="utf-8", errors="replace")
    assert "blocked the task result of round 0" in log, run.log_tail
    records = {json.loads(line)["client"]: json.loads(line) for line in (run.server_run_dir / "gia" / METRICS_FILE).read_text().splitlines()}
    # site-1's update never reached the server: the widget records it missing and has nothing to attack
    assert records[HIGH_RISK_SITE]["gia/status"] == "missing" and "gia/ssim" not in records[HIGH_RISK_SITE]
    assert not (run.server_run_dir / "gia" / HIGH_RISK_SITE).exists()
    assert records["site-2"]["gia/status"] == "ok" and (run.server_run_dir / "gia" / "site-2" / "round_0" / "reconstruction.npz").is_file()
    initial = SmallCNN(init_seed=0).state_dict()
    aggregated = load_global_model(run.server_run_dir)
    assert any(not torch.equal(aggregated[key].float(), value.float()) for key, value in initial.items() if value.is_floating_point())
