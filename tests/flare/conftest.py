"""Simulator runs shared by the FLARE tests (each costs tens of seconds, so they run once)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nvflare_gia.data import DataSpec
from nvflare_gia.flare.jobs import SimulatorRun, prepare_job, run_simulator


def saved_global_model(run_dir: Path) -> dict[str, torch.Tensor]:
    """The global model FedAvg saved at the end of a run."""
    paths = sorted(run_dir.rglob("FL_global_model.pt"))
    assert paths, f"no FL_global_model.pt under {run_dir}"
    saved = torch.load(paths[0], map_location="cpu", weights_only=False)
    return {k: torch.as_tensor(v) for k, v in (saved["model"] if "model" in saved else saved).items()}


@pytest.fixture(scope="session")
def fedavg_run(tmp_path_factory, nih_cxr_path) -> SimulatorRun:
    """``jobs/fedavg_cxr``, 2 rounds, 3 sites (TMI 2023 partition) on the real chest X-rays."""
    root = tmp_path_factory.mktemp("fedavg")
    job = prepare_job("fedavg_cxr", root / "job", num_rounds=2, data_spec=DataSpec(source=str(nih_cxr_path)))
    return run_simulator(job, root / "ws", timeout_s=600)


@pytest.fixture(scope="session")
def load_global_model():
    """:func:`saved_global_model`, as a fixture (test modules cannot import conftest)."""
    return saved_global_model
