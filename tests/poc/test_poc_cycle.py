"""POC cycle through ``nvflare_gia.flare.poc``: prepare → start → submit → finished → download → stop → clean.

The slow tests start a real FLARE POC system (server + 3 clients) on a free port in a temporary
workspace, with ``HOME`` in the temporary folder too, and always stop and delete it again.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nvflare_gia.data import DataSpec
from nvflare_gia.flare import poc
from nvflare_gia.flare.jobs import prepare_job
from nvflare_gia.flare.widget import METRICS_FILE

REPO_ROOT = Path(__file__).resolve().parents[2]
FEDAVG_CXR = REPO_ROOT / "jobs" / "fedavg_cxr"
N_CLIENTS = 3

# Bounds for each step of the cycle (seconds). Every wait in the cycle is bounded by one of these.
START_TIMEOUT_S = 120
JOB_TIMEOUT_S = {"fedavg_cxr": 900, "np_fedavg": 300, "fedavg_cxr_shadow": 600}
STOP_TIMEOUT_S = 90

logger = logging.getLogger(__name__)


def _write_np_job(folder: Path) -> Path:
    """A 1-round FedAvg job made of FLARE's numpy example components (no custom/ folder)."""
    config = folder / "app" / "config"
    config.mkdir(parents=True)
    meta = {"name": "np_fedavg", "min_clients": N_CLIENTS, "deploy_map": {"app": ["@ALL"]}, "resource_spec": {}}
    server = {
        "format_version": 2,
        "workflows": [
            {
                "id": "controller",
                "path": "nvflare.app_common.workflows.fedavg.FedAvg",
                "args": {"num_clients": N_CLIENTS, "num_rounds": 1},
            }
        ],
        "components": [{"id": "persistor", "path": "nvflare.app_common.np.np_model_persistor.NPModelPersistor"}],
    }
    client = {
        "format_version": 2,
        "executors": [{"tasks": ["train"], "executor": {"path": "nvflare.app_common.np.np_trainer.NPTrainer"}}],
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    (config / "config_fed_server.json").write_text(json.dumps(server))
    (config / "config_fed_client.json").write_text(json.dumps(client))
    return folder


def _assert_allow_list_patched(workspace: Path) -> None:
    from nvflare.apis.workspace import Workspace
    from nvflare.app_common.widgets.component_path_authorizer import ComponentPathAuthorizer

    sites = poc.site_dirs(workspace)
    assert [s.name for s in sites] == ["server"] + [f"site-{i}" for i in range(1, N_CLIENTS + 1)]
    for site in sites:
        resources = json.loads((site / "local" / "resources.json").read_text())
        assert {"nvflare.", "nvflare_gia."} <= set(resources["class_allow_list"]), site
        # FLARE's own authorizer must accept our classes for this site (raises UnsafeComponentError if not).
        ComponentPathAuthorizer().authorize_component_config(
            {"path": "nvflare_gia.flare.executor.TrainingExecutor"}, workspace=Workspace(str(site))
        )


def _error_logs(workspace: Path, job_id: str, result: Path) -> str:
    """Tails of the job's error logs: the server's (downloaded) and each client's (in its kit folder)."""
    logs = {"server": result / "workspace" / "error_log.txt"}
    logs.update({site.name: site / job_id / "error_log.txt" for site in poc.site_dirs(workspace)[1:]})
    parts = []
    for name, path in logs.items():
        if path.is_file() and path.stat().st_size:
            parts.append(f"--- {name}: {path}\n{path.read_text()[-1500:]}")
    return "\n".join(parts) or "(no error_log.txt has content)"


def _run_cycle(
    job: Path, tmp_path: Path, port: int, poc_admin: Callable, processes_mentioning: Callable, check_run_dir: Callable[[Path], None] | None = None
) -> dict[str, float]:
    """Run the whole cycle on ``job``, assert on each step, return the seconds each step took
    (``port``, ``poc_admin`` and ``processes_mentioning``: the fixtures of ``tests/poc/conftest.py``;
    ``check_run_dir`` is called with the downloaded server run directory)."""
    workspace = tmp_path / "ws"
    out_dir = tmp_path / "out"
    timings: dict[str, float] = {}
    t0 = last = time.monotonic()

    def lap(name: str) -> None:
        nonlocal last
        now = time.monotonic()
        timings[name] = now - last
        last = now

    try:
        poc.prepare(workspace, N_CLIENTS, port=port)
        lap("prepare")
        _assert_allow_list_patched(workspace)

        poc.start(workspace, timeout_s=START_TIMEOUT_S)
        lap("start")
        submitted = poc_admin(workspace, "submit", str(job), timeout_s=60)
        assert submitted.returncode == 0, submitted.stderr[-2000:]
        job_id = submitted.stdout.strip().splitlines()[-1]
        lap("submit")
        assert not list(job.rglob(".__nvfl_*")), "submit must not sign the user's job folder in place"
        waited = poc_admin(workspace, "wait", job_id, "--timeout", str(JOB_TIMEOUT_S[job.name]), timeout_s=JOB_TIMEOUT_S[job.name])
        status = waited.stdout.strip().splitlines()[-1] if waited.stdout.strip() else waited.stderr[-2000:]
        lap("run")
        downloaded = poc_admin(workspace, "download", job_id, str(out_dir), timeout_s=120)
        assert downloaded.returncode == 0, downloaded.stderr[-2000:]
        result = Path(downloaded.stdout.strip().splitlines()[-1])
        lap("download")
        assert status == poc.COMPLETED, f"job {job_id} ended {status}\n{_error_logs(workspace, job_id, result)}"
        assert result == out_dir / job_id
        run_dir = result / "workspace"
        for name in ("log.txt", "meta.json", "app_server/config/config_fed_server.json"):
            assert (run_dir / name).is_file(), f"{name} missing from the downloaded server run dir {run_dir}"
        errors = (run_dir / "error_log.txt").read_text() if (run_dir / "error_log.txt").exists() else ""
        assert "ComponentNotAuthorized" not in errors and "not in allow_list" not in errors, errors[-2000:]
        if check_run_dir is not None:
            check_run_dir(run_dir)

        killed = poc.stop(workspace, timeout_s=STOP_TIMEOUT_S)
        lap("stop")
        assert killed == [], f"poc.stop had to kill {killed}: the system did not shut down by itself"
        assert processes_mentioning(workspace) == []
    finally:
        try:
            poc.clean(workspace, timeout_s=STOP_TIMEOUT_S)
        finally:
            lap("clean")
            timings["total"] = time.monotonic() - t0
            logger.warning("POC cycle of %s: %s", job.name, {k: round(v, 1) for k, v in timings.items()})

    assert processes_mentioning(workspace) == []
    assert not workspace.exists()
    return timings


@pytest.mark.slow
def test_poc_cycle_fedavg_cxr_finishes_completed(tmp_path: Path, poc_home: Path, free_port, poc_admin, processes_mentioning) -> None:
    if not (FEDAVG_CXR / "meta.json").is_file():
        pytest.skip(f"{FEDAVG_CXR} does not exist: the job folder must be created before this test can run")
    _run_cycle(FEDAVG_CXR, tmp_path, free_port, poc_admin, processes_mentioning)


@pytest.mark.slow
def test_poc_cycle_shadow_job_defends_the_updates_the_widget_attacks(
    tmp_path: Path, poc_home: Path, free_port, poc_admin, processes_mentioning, nih_cxr_path
) -> None:
    """A data-aware defense job runs in POC without edits: each client's shadow filter reads the
    site's data through the job's data spec in its own workspace, and the server's widget attacks
    the defended updates (1 round on 40 real chest X-rays, a short attack)."""
    job = prepare_job(
        "fedavg_cxr_shadow", tmp_path / "fedavg_cxr_shadow", num_rounds=1,
        data_spec=DataSpec(source=str(nih_cxr_path), max_train_images=40),
        component_args={"gia_widget": {"max_seconds": 10.0, "max_iterations": 40, "restarts": 1, "end_run_wait_s": 60.0}},
    )

    def check(run_dir: Path) -> None:
        records = {r["client"]: r for r in map(json.loads, (run_dir / "gia" / METRICS_FILE).read_text().splitlines())}
        assert sorted(records) == ["site-1", "site-2"], records
        for client, record in records.items():
            assert record["gia/status"] == "ok", record
            assert record["gia_defense"]["name"] == "ShadowModelDefense" and record["gia_defense"]["noise_norm"] > 0, client

    _run_cycle(job, tmp_path, free_port, poc_admin, processes_mentioning, check_run_dir=check)


@pytest.mark.slow
def test_poc_cycle_numpy_job_finishes_completed(tmp_path: Path, poc_home: Path, free_port, poc_admin, processes_mentioning) -> None:
    """Same cycle on FLARE's own numpy components: separates POC problems from job problems."""
    _run_cycle(_write_np_job(tmp_path / "np_fedavg"), tmp_path, free_port, poc_admin, processes_mentioning)


def test_prepare_patches_allow_list_of_server_and_every_site(tmp_path: Path, poc_home: Path, processes_mentioning) -> None:
    workspace = tmp_path / "ws"
    try:
        poc.prepare(workspace, N_CLIENTS)
        _assert_allow_list_patched(workspace)
        # Idempotent: a second patch adds nothing twice.
        poc.patch_allow_list(workspace)
        for site in poc.site_dirs(workspace):
            allow = json.loads((site / "local" / "resources.json").read_text())["class_allow_list"]
            assert allow.count("nvflare_gia.") == 1 and allow.count("nvflare.") == 1
        assert processes_mentioning(workspace) == []
    finally:
        poc.clean(workspace)
    assert not workspace.exists()


def test_patch_allow_list_rejects_prefix_without_dot(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ending in '.'"):
        poc.patch_allow_list(tmp_path / "ws", ["nvflare_gia"])


def test_prepare_rejects_workspace_with_space(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="whitespace"):
        poc.prepare(tmp_path / "my ws")


def test_clean_of_missing_workspace_is_a_no_op(tmp_path: Path, poc_home: Path) -> None:
    poc.clean(tmp_path / "never_prepared")
    assert not (tmp_path / "never_prepared").exists()


def test_main_submit_without_meta_json_exits_1(tmp_path: Path, poc_home: Path) -> None:
    (tmp_path / "job").mkdir()
    assert poc.main(["-w", str(tmp_path / "ws"), "submit", str(tmp_path / "job")]) == 1


def test_stop_kills_leftover_process_of_workspace_after_timeout(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(workspace / "site-1")])
    try:
        assert [p.pid for p in poc.find_processes(workspace)] == [sleeper.pid]
        assert poc.stop(workspace, timeout_s=1) == [sleeper.pid]
        sleeper.wait(timeout=10)  # psutil already reaped it; this only must not block
        assert poc.find_processes(workspace) == []
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
