"""``nvflare_gia.flare.jobs``: job folders copied with overrides and simulator arguments checked, without running FLARE."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nvflare_gia.errors import ConfigError
from nvflare_gia.flare.jobs import JOBS_DIR, prepare_job, run_simulator


@pytest.fixture
def own_job(tmp_path: Path) -> Path:
    job = tmp_path / "my jobs" / "fedavg_cxr_audit"
    shutil.copytree(JOBS_DIR / "fedavg_cxr_audit", job)
    return job


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["itself", "its_parent", "inside_it"])
def test_prepare_job_refuses_a_destination_that_overlaps_the_source(own_job, where):
    before = _tree(own_job.parent)
    destination = {"itself": own_job, "its_parent": own_job.parent, "inside_it": own_job / "copy"}[where]
    with pytest.raises(ConfigError, match=r"prepare_job: destination must not .*source"):
        prepare_job(own_job, destination, num_rounds=2)
    assert _tree(own_job.parent) == before, "the source job must be left untouched"


def test_prepare_job_writes_overrides_into_a_copy_beside_the_source(own_job):
    destination = own_job.parent / "prepared"
    prepare_job(own_job, destination, num_rounds=2, component_args={"gia_widget": {"max_seconds": 5.0}})
    server = json.loads((destination / "app" / "config" / "config_fed_server.json").read_text())
    assert server["workflows"][0]["args"]["num_rounds"] == 2
    assert next(c for c in server["components"] if c["id"] == "gia_widget")["args"]["max_seconds"] == 5.0
    assert json.loads((own_job / "app" / "config" / "config_fed_server.json").read_text())["workflows"][0]["args"]["num_rounds"] == 5


def test_run_simulator_refuses_a_workspace_with_whitespace_before_starting(own_job, tmp_path):
    # nvflare simulator starts its clients with shlex.split of an unquoted command line: they die
    # with "unrecognized arguments" and the run fails a minute later
    workspace = tmp_path / "my runs" / "ws"
    with pytest.raises(ConfigError, match=r"run_simulator: workspace must not contain whitespace"):
        run_simulator(own_job, workspace, timeout_s=5)
    assert not workspace.exists() and not workspace.with_name("ws.log").exists()
