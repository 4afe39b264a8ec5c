"""Job folders and the FLARE simulator: copy a job with overrides, run it, read its TensorBoard scalars."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from nvflare_gia.data import DataSpec
from nvflare_gia.errors import ConfigError

__all__ = [
    "JOBS_DIR",
    "CLASS_ALLOW_LIST",
    "find_job",
    "prepare_job",
    "allow_package_components",
    "SimulatorRun",
    "run_simulator",
    "read_tb_scalars",
]

logger = logging.getLogger(__name__)

JOBS_DIR = Path(__file__).resolve().parents[2] / "jobs"
DATA_SPEC_FILE = "gia_data.json"
CLASS_ALLOW_LIST = ("nvflare.", "nvflare_gia.")


def find_job(name_or_path: str | os.PathLike) -> Path:
    """Return the job folder for a path, or for a job name under the project's ``jobs/``.

    Raises:
        ConfigError: if no such folder holds a ``meta.json``.
    """
    for candidate in (Path(name_or_path), JOBS_DIR / str(name_or_path), Path.cwd() / "jobs" / str(name_or_path)):
        if (candidate / "meta.json").is_file():
            return candidate.resolve()
    known = sorted(p.name for p in JOBS_DIR.glob("*") if (p / "meta.json").is_file()) if JOBS_DIR.is_dir() else []
    raise ConfigError(f"find_job: job must be a job folder or one of {known}, got {str(name_or_path)!r}.")


def _load_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _dump_json(path: Path, content: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=4)
        f.write("\n")


def prepare_job(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    num_rounds: int | None = None,
    data_spec: DataSpec | None = None,
    num_classes: int | None = None,
    component_args: dict[str, dict] | None = None,
) -> Path:
    """Copy a job folder and apply overrides: rounds, the data spec, the model's class count, and
    any server or client component's arguments.

    Args:
        source: job folder (or a name under ``jobs/``).
        destination: where to write the copy (replaced if it exists).
        num_rounds: FedAvg rounds; None keeps the job's value.
        data_spec: written to ``app/config/gia_data.json``; relative file paths are made absolute.
        num_classes: sets ``num_classes`` of the server persistor's model; None keeps it.
        component_args: ``{component_id: {arg: value}}`` merged into the args of the server or
            client component with that id (e.g. ``{"gia_widget": {"max_seconds": 20}}``).

    Returns:
        The prepared job folder.

    Raises:
        ConfigError: for a bad override, or a destination that is, holds or lies inside the source.
    """
    src = find_job(source)
    dst = Path(destination)
    resolved = dst.resolve()
    if resolved == src or src.is_relative_to(resolved) or resolved.is_relative_to(src):
        # the destination is deleted first: it must neither be nor hold the source, nor lie inside it
        raise ConfigError(
            f"prepare_job: destination must not be, contain or lie inside the source job {str(src)!r}, got {str(destination)!r}."
        )
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    config_dir = dst / "app" / "config"
    server_config_path = config_dir / "config_fed_server.json"
    server_config = _load_json(server_config_path)
    if num_rounds is not None:
        if int(num_rounds) < 1:
            raise ConfigError(f"prepare_job: num_rounds must be >= 1, got {num_rounds!r}.")
        for workflow in server_config["workflows"]:
            workflow.setdefault("args", {})["num_rounds"] = int(num_rounds)
    if num_classes is not None:
        for component in server_config["components"]:
            model = component.get("args", {}).get("model")
            if isinstance(model, dict) and "path" in model:
                model.setdefault("args", {})["num_classes"] = int(num_classes)
    _dump_json(server_config_path, server_config)
    if component_args:
        _override_component_args(config_dir, component_args)
    if data_spec is not None:
        source_value = data_spec.source
        if source_value != "synthetic" and not os.path.isabs(source_value):
            data_spec = dataclasses.replace(data_spec, source=str(Path(source_value).resolve()))
        _dump_json(config_dir / DATA_SPEC_FILE, data_spec.to_dict())
    return dst


def allow_package_components(local_dir: str | os.PathLike, prefixes: Sequence[str] = CLASS_ALLOW_LIST) -> Path:
    """Allow FLARE's and nvflare_gia's components in a site's ``local/resources.json``.

    FLARE 2.9 only builds job components whose class path matches the site's ``class_allow_list``
    (jobs without ``custom/`` code); nvflare_gia jobs use installed classes, so every site (and the
    simulator's workspace) needs ``"nvflare_gia."`` in that list. Existing settings are kept.

    Args:
        local_dir: the site's ``local`` folder (created if missing).
        prefixes: class-path prefixes to allow.

    Returns:
        The path of the written ``resources.json``.

    Raises:
        ConfigError: if an existing ``class_allow_list`` is not a list.
    """
    folder = Path(local_dir)
    folder.mkdir(parents=True, exist_ok=True)
    resources_path = folder / "resources.json"
    default_path = folder / "resources.json.default"
    source = resources_path if resources_path.is_file() else default_path
    resources = _load_json(source) if source.is_file() else {}
    allowed = resources.get("class_allow_list", [])
    if not isinstance(allowed, list):
        raise ConfigError(f"allow_package_components: class_allow_list in {source} must be a list, got {allowed!r}.")
    resources["class_allow_list"] = allowed + [prefix for prefix in prefixes if prefix not in allowed]
    _dump_json(resources_path, resources)
    return resources_path


def _override_component_args(config_dir: Path, component_args: dict[str, dict]) -> None:
    remaining = set(component_args)
    for config_path in sorted(config_dir.glob("config_fed_*.json")):
        config = _load_json(config_path)
        for component in config.get("components", []):
            if component.get("id") in component_args:
                component.setdefault("args", {}).update(component_args[component["id"]])
                remaining.discard(component["id"])
        _dump_json(config_path, config)
    if remaining:
        raise ConfigError(f"prepare_job: component_args names components {sorted(remaining)} that the job does not have.")


@dataclasses.dataclass(frozen=True)
class SimulatorRun:
    """Outcome of one simulator run.

    Attributes:
        workspace: the simulator workspace.
        server_run_dir: the server's run directory (``<workspace>/server/simulate_job``).
        returncode: the simulator's exit code (0 = completed).
        seconds: wall time.
        log_tail: the last lines of the simulator's output.
    """

    workspace: Path
    server_run_dir: Path
    returncode: int
    seconds: float
    log_tail: str


def run_simulator(
    job: str | os.PathLike,
    workspace: str | os.PathLike,
    clients: Sequence[str] = ("site-1", "site-2", "site-3"),
    threads: int | None = None,
    timeout_s: float = 1800.0,
) -> SimulatorRun:
    """Run a job in ``nvflare simulator`` as a subprocess (FLARE's own runtime, one process).

    Args:
        job: job folder.
        workspace: simulator workspace (replaced if it exists).
        clients: client names.
        threads: client threads; default one per client.
        timeout_s: wall-clock limit; the simulator is killed past it.

    Returns:
        The run's outcome; the simulator's output is kept in ``<workspace>.log`` (the simulator owns
        the workspace folder itself).

    Raises:
        ConfigError: if the workspace path contains whitespace (the simulator cannot start its clients there).
    """
    ws = Path(workspace).resolve()
    if any(c.isspace() for c in str(ws)):
        # nvflare simulator starts each client with shlex.split of an unquoted command line
        raise ConfigError(f"run_simulator: workspace must not contain whitespace, got {str(ws)!r}.")
    if ws.exists():
        shutil.rmtree(ws)
    allow_package_components(ws / "local")
    command = [
        sys.executable, "-m", "nvflare.cli", "simulator", str(Path(job).resolve()),
        "-w", str(ws), "-c", ",".join(clients), "-t", str(threads or len(clients)),
    ]
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    log_path = ws.with_name(ws.name + ".log")
    start = time.monotonic()
    logger.info("running: %s", " ".join(command))
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            returncode = -9
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    return SimulatorRun(ws, ws / "server" / "simulate_job", returncode, time.monotonic() - start, "\n".join(lines[-40:]))


def read_tb_scalars(run_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Read every TensorBoard scalar under ``run_dir`` (e.g. FLARE's ``tb_events`` on the server).

    Returns:
        ``{tag: [(step, value), ...]}`` sorted by step; tags are prefixed by the event folder's name
        relative to ``run_dir`` when it is not the root (FLARE writes one folder per site).
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)

    scalars: dict[str, list[tuple[int, float]]] = {}
    for event_file in sorted(Path(run_dir).rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(event_file.parent), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            values = [(int(e.step), float(e.value)) for e in accumulator.Scalars(tag)]
            scalars[tag] = sorted(set(scalars.get(tag, []) + values))
    return scalars
