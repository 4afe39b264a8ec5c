"""Simulator runs shared by the FLARE tests (each costs tens of seconds, so they run once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from nvflare.apis.fl_context import FLContext, FLContextManager
from nvflare.apis.workspace import Workspace
from nvflare.fuel.utils.component_builder import ComponentBuilder

from nvflare_gia.data import DataSpec, load_site_data
from nvflare_gia.flare.jobs import SimulatorRun, prepare_job, run_simulator
from nvflare_gia.models import SmallCNN
from nvflare_gia.training import TrainingConfig, train_local, training_meta


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


class StubEngine:
    """The three things a filter asks of the engine: the workspace, events (ignored), new contexts."""

    def __init__(self, workspace: Workspace, site: str, job_id: str) -> None:
        self.workspace = workspace
        self.manager = FLContextManager(engine=self, identity_name=site, job_id=job_id)

    def get_workspace(self) -> Workspace:
        return self.workspace

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Events fired by the filters are not needed here."""

    def new_context(self) -> FLContext:
        return self.manager.new_context()


def _site_workspace(root: Path, site: str, job_id: str) -> tuple[StubEngine, Path]:
    """A client workspace under ``root`` (startup/, local/, the job's app config folder) and its engine."""
    (root / "startup").mkdir(parents=True)
    (root / "local").mkdir()
    workspace = Workspace(str(root), site_name=site)
    config_dir = Path(workspace.get_app_config_dir(job_id))
    config_dir.mkdir(parents=True)
    return StubEngine(workspace, site, job_id), config_dir


@pytest.fixture(scope="session")
def site_workspace():
    """``make(root, site, job_id) -> (engine, app config folder)``: :func:`_site_workspace` as a
    fixture (test modules cannot import conftest)."""
    return _site_workspace


def _train_site_round(spec: DataSpec, site: str, round_index: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """``site``'s round as its client script runs it: ``SmallCNN(init_seed=0)`` trained one round
    on the site's data; returns the global state, the update and the meta it sends (NumPy)."""
    data = load_site_data(spec, site)
    training = TrainingConfig()
    model = SmallCNN(init_seed=0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    steps = train_local(model, data.train_images, data.train_labels, data.batch_size, training, round_index=round_index)
    update = {k: (v - start[k]).numpy() for k, v in model.state_dict().items()}
    meta = {
        "NUM_STEPS_CURRENT_ROUND": steps,
        "gia_training": training_meta(training, "small_cnn", data.train_images, data.num_classes, data.batch_size),
    }
    return {k: v.numpy() for k, v in start.items()}, update, meta


@pytest.fixture(scope="session")
def train_site_round():
    """:func:`_train_site_round` as a fixture."""
    return _train_site_round


class _ScannerFreeBuilder(ComponentBuilder):
    """FLARE's component builder without its module scanner: a ``path`` is imported as given."""

    def get_module_scanner(self):
        return None


@pytest.fixture(scope="session")
def build_component():
    """``build(path, args) -> object``: a component built the way FLARE builds one from a job's JSON."""
    return lambda path, args: _ScannerFreeBuilder().build_component({"path": path, "args": args})
