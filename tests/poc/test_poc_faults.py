"""POC under faults: a client site is killed mid-job; the job finishes with the other sites.

A real FLARE POC system (server + 3 clients, free port, temporary workspace and HOME) runs
``fedavg_cxr_audit`` for 2 rounds. As soon as round 0 starts, every process of site-2 (its
``sub_start.sh`` watchdog, the client parent and the job's worker process) gets SIGKILL: the site's
machine is gone. FedAvg must then aggregate both rounds from site-1 and site-3, the job must end
``FINISHED:COMPLETED``, the widget must record site-2 (an attacked site) as ``missing``, and no
process of the workspace may be left once the system is stopped.

Killing only the job's worker process is not this test: the client parent then reports the job
failed and FLARE 2.9 fails the whole job by design (``REPORT_JOB_FAILURE``,
``private/fed/server/fed_server.py``).

Three settings make the dead site visible in seconds instead of minutes; production keeps them:
the server's ``heart_beat_timeout`` (``local/resources.json``, 600 s in POC) and the job's
``dead_client_grace_period`` / ``dead_client_check_lead_time`` (60 s / 30 s). ``min_clients`` in
``meta.json`` is 2, so two live sites satisfy the job's deployment policy.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import psutil
import pytest

from nvflare_gia.data import DataSpec
from nvflare_gia.flare import poc
from nvflare_gia.flare.jobs import prepare_job

N_CLIENTS = 3
KILLED = "site-2"
FAST_ATTACK = {"max_seconds": 4.0, "max_iterations": 40, "restarts": 1, "end_run_wait_s": 20.0}
HEART_BEAT_TIMEOUT_S = 30  # clients send a heartbeat every 10 s
START_TIMEOUT_S = 120
ROUND_0_TIMEOUT_S = 120
JOB_TIMEOUT_S = 400
STOP_TIMEOUT_S = 90

logger = logging.getLogger(__name__)


def _job(folder: Path, nih_cxr_path: Path) -> Path:
    job = prepare_job(
        "fedavg_cxr_audit",
        folder,
        num_rounds=2,
        data_spec=DataSpec(source=str(nih_cxr_path), max_train_images=64),
        component_args={"gia_widget": FAST_ATTACK},
    )
    server_config = job / "app" / "config" / "config_fed_server.json"
    server = json.loads(server_config.read_text())
    server.update({"dead_client_grace_period": 2.0, "dead_client_check_lead_time": 5.0})
    server_config.write_text(json.dumps(server, indent=4))
    meta = json.loads((job / "meta.json").read_text())
    meta["min_clients"] = N_CLIENTS - 1
    (job / "meta.json").write_text(json.dumps(meta, indent=4))
    return job


def _set_heart_beat_timeout(workspace: Path, seconds: int) -> None:
    resources_path = poc.prod_dir(workspace) / "server" / "local" / "resources.json"
    resources = json.loads(resources_path.read_text())
    resources["servers"][0]["heart_beat_timeout"] = seconds
    resources_path.write_text(json.dumps(resources, indent=4))


def _wait_for(path: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise AssertionError(f"{text!r} did not appear in {path} within {timeout_s} s")


def _kill_site(workspace: Path, site: str) -> list[int]:
    """SIGKILL every process of one site: the restarting watchdog first, then the client and its job."""
    site_dir = str(poc.prod_dir(workspace) / site)
    victims = [p for p in poc.find_processes(workspace) if any(site_dir in arg for arg in p.cmdline())]
    victims.sort(key=lambda p: p.name() != "bash")  # sub_start.sh would restart the client
    for victim in victims:
        logger.warning("SIGKILL %d: %s", victim.pid, " ".join(victim.cmdline())[:160])
        victim.kill()
    psutil.wait_procs(victims, timeout=10)
    return [v.pid for v in victims]


@pytest.mark.slow
def test_poc_job_completes_without_a_killed_site_and_widget_records_it_missing(
    tmp_path: Path, poc_home: Path, nih_cxr_path: Path, free_port: int, poc_admin, processes_mentioning
) -> None:
    workspace = tmp_path / "ws"
    job = _job(tmp_path / "fedavg_cxr_audit", nih_cxr_path)
    started = time.monotonic()
    try:
        poc.prepare(workspace, N_CLIENTS, port=free_port)
        _set_heart_beat_timeout(workspace, HEART_BEAT_TIMEOUT_S)
        poc.start(workspace, timeout_s=START_TIMEOUT_S)
        submitted = poc_admin(workspace, "submit", str(job), timeout_s=60)
        assert submitted.returncode == 0, submitted.stderr[-2000:]
        job_id = submitted.stdout.strip().splitlines()[-1]

        _wait_for(poc.prod_dir(workspace) / "server" / job_id / "log.txt", "Round 0 started.", ROUND_0_TIMEOUT_S)
        killed = _kill_site(workspace, KILLED)
        assert len(killed) == 3, f"expected watchdog, client and job processes of {KILLED}, killed {killed}"
        assert processes_mentioning(poc.prod_dir(workspace) / KILLED) == [], f"{KILLED} still runs"

        waited = poc_admin(workspace, "wait", job_id, "--timeout", str(JOB_TIMEOUT_S), timeout_s=JOB_TIMEOUT_S)
        status = waited.stdout.strip().splitlines()[-1] if waited.stdout.strip() else waited.stderr[-2000:]
        downloaded = poc_admin(workspace, "download", job_id, str(tmp_path / "out"), timeout_s=120)
        assert downloaded.returncode == 0, downloaded.stderr[-2000:]
        run_dir = Path(downloaded.stdout.strip().splitlines()[-1]) / "workspace"
        server_log = (run_dir / "log.txt").read_text()
        assert status == poc.COMPLETED, f"job {job_id} ended {status}\n{server_log[-3000:]}"

        # Both rounds aggregate, from the two live sites only.
        assert "Finished FedAvg." in server_log
        round_0, rest = server_log.split("Round 1 started.")
        round_1 = rest.split("Finished FedAvg.")[0]
        for name, text in (("round 0", round_0), ("round 1", round_1)):
            assert "Aggregated 2/3 results" in text and "Aggregated 3/3" not in text, f"{name} did not aggregate the 2 live sites"
        assert f"Client {KILLED} is deemed disconnected!" in server_log

        # The widget attacked the live site and recorded the killed one as missing in every round.
        records = {(r["client"], r["round"]): r for r in map(json.loads, (run_dir / "gia" / "metrics.jsonl").read_text().splitlines())}
        logger.warning("widget records: %s", {k: (r["gia/status"], r.get("reason")) for k, r in sorted(records.items())})
        assert sorted(records) == [("site-1", 0), ("site-1", 1), (KILLED, 0), (KILLED, 1)], sorted(records)
        for round_index in (0, 1):
            assert records[("site-1", round_index)]["gia/status"] == "ok", records[("site-1", round_index)]
            missing = records[(KILLED, round_index)]
            assert missing["gia/status"] == "missing" and f"round {round_index}" in missing["reason"], missing

        assert poc.stop(workspace, timeout_s=STOP_TIMEOUT_S) == [], "the live sites did not shut down by themselves"
        assert processes_mentioning(workspace) == []
    finally:
        try:
            poc.clean(workspace, timeout_s=STOP_TIMEOUT_S)
        finally:
            logger.warning("POC fault cycle took %.0f s", time.monotonic() - started)
    assert processes_mentioning(workspace) == []
    assert not workspace.exists()
