"""Run nvflare_gia jobs in a local NVIDIA FLARE 2.9 POC system.

This is the FLARE layer behind ``poc/*.sh``: it prepares a POC workspace whose sites allow
``nvflare.`` and ``nvflare_gia.`` components, starts it, submits a job through the admin API,
waits for it, downloads the server's run directory, and stops and removes everything again.

The shell commands that it wraps (``nvflare poc prepare|start|stop|clean``) read the workspace from
``NVFLARE_POC_WORKSPACE``, write ``~/.nvflare/config.conf`` and launch the sites with a plain
``python3``. Every subprocess therefore gets an environment with ``NVFLARE_POC_WORKSPACE`` set, a
writable ``HOME`` and the current interpreter's ``bin`` folder first on ``PATH``.

Example:
    >>> from nvflare_gia.flare import poc
    >>> ws = "/tmp/nvflare_gia_poc"
    >>> poc.prepare(ws, n_clients=3)  # doctest: +SKIP
    >>> poc.start(ws)  # doctest: +SKIP
    >>> try:  # doctest: +SKIP
    ...     job_id = poc.submit(ws, "jobs/fedavg_cxr")
    ...     status = poc.wait(ws, job_id, timeout_s=1800)
    ...     result_dir = poc.download(ws, job_id, "gia_runs")
    ... finally:
    ...     poc.stop(ws)
    ...     poc.clean(ws)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from nvflare_gia.flare.jobs import CLASS_ALLOW_LIST, allow_package_components

__all__ = [
    "ADMIN_USER",
    "ALLOW_LIST_PREFIXES",
    "DEFAULT_WORKSPACE",
    "COMPLETED",
    "admin_kit_dir",
    "clean",
    "default_workspace",
    "download",
    "find_processes",
    "main",
    "patch_allow_list",
    "poc_env",
    "prepare",
    "prod_dir",
    "run_job",
    "site_dirs",
    "start",
    "stop",
    "submit",
    "wait",
]

logger = logging.getLogger(__name__)

DEFAULT_WORKSPACE = "/tmp/nvflare_gia_poc"
"""Workspace used when neither an argument nor ``NVFLARE_POC_WORKSPACE`` names one."""

ALLOW_LIST_PREFIXES = CLASS_ALLOW_LIST
"""Package prefixes added to every site's ``class_allow_list``."""

ADMIN_USER = "admin@nvidia.com"
"""The project admin that ``nvflare poc prepare`` provisions."""

COMPLETED = "FINISHED:COMPLETED"
"""Job status of a job that ran to its end without error."""

_TAIL_CHARS = 2000


def default_workspace() -> Path:
    """Return the POC workspace to use when none is given.

    Returns:
        ``$NVFLARE_POC_WORKSPACE`` if set and non-empty, else :data:`DEFAULT_WORKSPACE`, made absolute.
    """
    return Path(os.environ.get("NVFLARE_POC_WORKSPACE") or DEFAULT_WORKSPACE).absolute()


def _workspace(workspace: str | os.PathLike | None) -> Path:
    ws = default_workspace() if workspace is None else Path(workspace).absolute()
    if any(c.isspace() for c in str(ws)):
        # nvflare poc start runs each site with ``cmd_path.split(" ")``.
        raise ValueError(f"poc: workspace must not contain whitespace, got {str(ws)!r}.")
    return ws


def _is_writable_dir(path: str | None) -> bool:
    if not path or not os.path.isdir(path) or not os.access(path, os.W_OK):
        return False
    hidden = os.path.join(path, ".nvflare")
    return not os.path.exists(hidden) or os.access(hidden, os.W_OK)


def _fallback_home(ws: Path) -> Path:
    return ws.with_name(ws.name + ".home")


def poc_env(workspace: str | os.PathLike | None = None) -> dict[str, str]:
    """Build the environment for ``nvflare poc`` subprocesses.

    Args:
        workspace: POC workspace; ``None`` means :func:`default_workspace`.

    Returns:
        A copy of ``os.environ`` with ``NVFLARE_POC_WORKSPACE`` set to the workspace, the current
        interpreter's folder first on ``PATH`` (the sites are started with plain ``python3``), the
        folder holding ``nvflare_gia`` first on ``PYTHONPATH``, and ``HOME`` replaced by
        ``<workspace>.home`` when the current one is not writable.
    """
    ws = _workspace(workspace)
    env = dict(os.environ)
    env["NVFLARE_POC_WORKSPACE"] = str(ws)
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH", "")) if p)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    if not _is_writable_dir(env.get("HOME")):
        home = _fallback_home(ws)
        home.mkdir(parents=True, exist_ok=True)
        logger.info("HOME %r is not writable; using %s for ~/.nvflare", env.get("HOME"), home)
        env["HOME"] = str(home)
    return env


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _TAIL_CHARS else "..." + text[-_TAIL_CHARS:]


def _nvflare(args: Sequence[str], ws: Path, timeout_s: float) -> str:
    """Run ``nvflare <args>`` for ``ws``; return its stdout, raise RuntimeError on failure."""
    cmd = [sys.executable, "-m", "nvflare.cli", *args]
    shown = "nvflare " + " ".join(args)
    logger.info("running: %s (NVFLARE_POC_WORKSPACE=%s)", shown, ws)
    # Temporary files, not pipes: site processes started by `poc start` must not hold our pipes open.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        try:
            proc = subprocess.run(
                cmd, env=poc_env(ws), stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as e:
            out.seek(0)
            err.seek(0)
            raise RuntimeError(
                f"`{shown}` did not finish within {timeout_s:g} s.\n"
                f"stdout tail:\n{_tail(out.read())}\nstderr tail:\n{_tail(err.read())}"
            ) from e
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(
            f"`{shown}` failed with exit code {proc.returncode}.\n"
            f"stderr tail:\n{_tail(stderr)}\nstdout tail:\n{_tail(stdout)}"
        )
    return stdout


def _project(ws: Path) -> dict:
    import yaml

    project_file = ws / "project.yml"
    if not project_file.is_file():
        raise FileNotFoundError(f"poc: {project_file} not found; run prepare({str(ws)!r}) first.")
    with open(project_file) as f:
        project = yaml.safe_load(f)
    if not isinstance(project, dict) or not isinstance(project.get("participants"), list):
        raise RuntimeError(f"poc: {project_file} has no participants list.")
    return project


def prod_dir(workspace: str | os.PathLike | None = None) -> Path:
    """Return the folder that holds the startup kits of a prepared workspace.

    Args:
        workspace: POC workspace; ``None`` means :func:`default_workspace`.

    Returns:
        ``<workspace>/<project name>/prod_00`` (the newest ``prod_NN``).

    Raises:
        FileNotFoundError: if the workspace was not prepared.
    """
    ws = _workspace(workspace)
    name = _project(ws).get("name", "example_project")
    prods = sorted((ws / name).glob("prod_*"))
    if not prods:
        raise FileNotFoundError(f"poc: no {ws / name}/prod_* folder; run prepare({str(ws)!r}) first.")
    return prods[-1]


def admin_kit_dir(workspace: str | os.PathLike | None = None) -> Path:
    """Return the project admin's startup kit folder (``.../prod_00/admin@nvidia.com``).

    Args:
        workspace: POC workspace; ``None`` means :func:`default_workspace`.

    Returns:
        The admin kit folder, which holds ``startup/fed_admin.json``.

    Raises:
        FileNotFoundError: if the workspace was not prepared.
    """
    kit = prod_dir(workspace) / ADMIN_USER
    if not (kit / "startup").is_dir():
        raise FileNotFoundError(f"poc: admin startup kit {kit}/startup not found.")
    return kit


def site_dirs(workspace: str | os.PathLike | None = None) -> list[Path]:
    """Return the kit folders of the server and of every client.

    Args:
        workspace: POC workspace; ``None`` means :func:`default_workspace`.

    Returns:
        ``[prod/server, prod/site-1, ...]`` in ``project.yml`` order.

    Raises:
        FileNotFoundError: if the workspace was not prepared.
    """
    ws = _workspace(workspace)
    prod = prod_dir(ws)
    names = [p["name"] for p in _project(ws)["participants"] if p.get("type") in ("server", "client")]
    return [prod / n for n in names]


def _server_port(ws: Path) -> int:
    server = next(p for p in _project(ws)["participants"] if p.get("type") == "server")
    return int(server.get("fed_learn_port", 8002))


def patch_allow_list(
    workspace: str | os.PathLike | None = None, prefixes: Sequence[str] = ALLOW_LIST_PREFIXES
) -> list[Path]:
    """Add package prefixes to the server's and every client's ``local/resources.json``.

    FLARE 2.9 checks every component ``path`` of a job without a ``custom/`` folder against the
    top-level ``"class_allow_list"`` of ``local/resources.json`` (or, when that file is missing,
    ``local/resources.json.default``); see ``nvflare/app_common/widgets/component_path_authorizer.py``.
    An entry ending in ``.`` allows every class under that package. A missing ``resources.json`` is
    created from ``resources.json.default``; entries already in the list are kept.

    Args:
        workspace: POC workspace; ``None`` means :func:`default_workspace`.
        prefixes: package prefixes, each ending in ``"."``.

    Returns:
        The ``resources.json`` files written.

    Raises:
        ValueError: if a prefix does not end in ``"."``.
        FileNotFoundError: if the workspace was not prepared.
        RuntimeError: if an existing file has a non-list ``class_allow_list``, or FLARE's authorizer
            still rejects a class under one of the prefixes after the patch.
    """
    for prefix in prefixes:
        if not isinstance(prefix, str) or not prefix.endswith(".") or prefix.strip() != prefix or len(prefix) < 2:
            raise ValueError(f"patch_allow_list: prefixes must be package names ending in '.', got {prefix!r}.")
    written = []
    for site in site_dirs(workspace):
        target = allow_package_components(site / "local", prefixes)
        _check_allowed(site, prefixes)
        written.append(target)
        logger.info("%s: class_allow_list now allows %s", target, ", ".join(prefixes))
    return written


def _check_allowed(site: Path, prefixes: Sequence[str]) -> None:
    """Ask FLARE's own authorizer whether ``site`` accepts a class under each prefix."""
    from nvflare.apis.fl_exception import UnsafeComponentError
    from nvflare.apis.workspace import Workspace
    from nvflare.app_common.widgets.component_path_authorizer import ComponentPathAuthorizer

    authorizer, workspace = ComponentPathAuthorizer(), Workspace(str(site))
    for prefix in prefixes:
        probe = f"{prefix}poc_probe.Probe"
        try:
            authorizer.authorize_component_config({"path": probe}, workspace=workspace)
        except UnsafeComponentError as e:
            raise RuntimeError(f"poc: {site.name} still rejects {probe!r} after patching: {e}") from e


def prepare(
    workspace: str | os.PathLike | None = None,
    n_clients: int = 3,
    *,
    port: int | None = None,
    allow_list: Sequence[str] = ALLOW_LIST_PREFIXES,
    timeout_s: float = 120.0,
) -> Path:
    """Create a fresh POC workspace with ``n_clients`` sites (``site-1`` ... ``site-N``).

    Runs ``nvflare poc prepare -n N --force`` (which deletes an existing workspace, stopping its
    system first), optionally re-provisions with another server port, then patches the allow-list
    of every site (see :func:`patch_allow_list`).

    Args:
        workspace: POC workspace; ``None`` means :func:`default_workspace`.
        n_clients: number of client sites, at least 1.
        port: server port for FL and admin traffic; ``None`` keeps FLARE's 8002.
        allow_list: package prefixes added to every site's ``class_allow_list``.
        timeout_s: limit for each ``nvflare poc prepare`` call.

    Returns:
        The workspace path.

    Raises:
        ValueError: if ``n_clients`` or ``port`` is out of range or the path contains whitespace.
        RuntimeError: if ``nvflare poc prepare`` fails.
    """
    if isinstance(n_clients, bool) or not isinstance(n_clients, int) or n_clients < 1:
        raise ValueError(f"prepare: n_clients must be an int >= 1, got {n_clients!r}.")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535):
        raise ValueError(f"prepare: port must be an int in [1024, 65535] or None, got {port!r}.")
    ws = _workspace(workspace)
    ws.parent.mkdir(parents=True, exist_ok=True)
    _nvflare(["poc", "prepare", "-n", str(n_clients), "--force"], ws, timeout_s)
    if port is not None and port != _server_port(ws):
        import yaml

        project = _project(ws)
        for participant in project["participants"]:
            if participant.get("type") == "server":
                participant["fed_learn_port"] = port
                participant["admin_port"] = port
        with tempfile.TemporaryDirectory() as tmp:
            project_file = Path(tmp) / "project.yml"
            with open(project_file, "w") as f:
                yaml.safe_dump(project, f, sort_keys=False)
            _nvflare(["poc", "prepare", "-i", str(project_file), "--force"], ws, timeout_s)
    patch_allow_list(ws, allow_list)
    logger.info("POC workspace ready at %s (%d clients, port %d)", ws, n_clients, _server_port(ws))
    return ws


def find_processes(workspace: str | os.PathLike | None = None) -> list:
    """List the running processes whose command line mentions the workspace.

    The current process and its ancestors (for example ``poc/stop.sh``) are left out.

    Args:
        workspace: POC workspace; ``None`` means :func:`default_workspace`.

    Returns:
        ``psutil.Process`` objects, one per matching process.
    """
    import psutil

    ws = str(_workspace(workspace))
    me = psutil.Process()
    skip = {me.pid, *(p.pid for p in me.parents())}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info["pid"] in skip:
            continue
        if any(arg == ws or arg.startswith(ws + os.sep) or (ws + os.sep) in arg for arg in cmdline):
            found.append(proc)
    return found


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start(workspace: str | os.PathLike | None = None, timeout_s: float = 120.0) -> None:
    """Start the server and all clients of a prepared workspace and wait until all are connected.

    Runs ``nvflare poc start --timeout T``, which returns once the admin server answers and every
    client has registered. No admin console is started. If the system does not come up, whatever
    was started is stopped again before the error is raised.

    Args:
        workspace: POC workspace; ``None`` means :func:`default_workspace`.
        timeout_s: how long to wait for the system to be ready.

    Raises:
        FileNotFoundError: if the workspace was not prepared.
        RuntimeError: if processes of this workspace are already running, the server port is taken
            (another POC?), or the system does not become ready in time.
    """
    ws = _workspace(workspace)
    port = _server_port(ws)
    running = find_processes(ws)
    if running:
        raise RuntimeError(
            f"start: {len(running)} process(es) of {ws} are already running "
            f"(pids {[p.pid for p in running]}); call stop() first."
        )
    if _port_in_use(port):
        raise RuntimeError(
            f"start: port {port} on localhost is already in use (another POC system?). "
            f"Stop it, or prepare this workspace with another port (prepare(..., port=N))."
        )
    try:
        _nvflare(["poc", "start", "--timeout", str(max(1, int(timeout_s)))], ws, timeout_s + 60)
    except RuntimeError:
        logger.error("POC start failed; stopping what was started. Console logs: %s/*/poc_console.log", prod_dir(ws))
        stop(ws, timeout_s=30)
        raise
    logger.info("POC system of %s is running on port %d", ws, port)


@contextlib.contextmanager
def _admin_session(ws: Path, timeout_s: float, caller: str) -> Iterator:
    """Admin API session as the project admin, closed on exit.

    The admin API prints progress ("Connecting to FLARE ...") to stdout; it goes to stderr here so
    that stdout carries only results (``job_id=$(poc/submit.sh JOB)``).
    """
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    kit = admin_kit_dir(ws)
    deadline = time.monotonic() + timeout_s
    with contextlib.redirect_stdout(sys.stderr):
        # A server still settling (or a loaded machine) can fail a login outright rather than
        # time out; retry with a fresh session until the deadline.
        while True:
            try:
                session = new_secure_session(ADMIN_USER, str(kit), timeout=max(5.0, deadline - time.monotonic()))
                break
            except Exception as e:
                if time.monotonic() + 3.0 >= deadline:
                    raise RuntimeError(
                        f"{caller}: cannot connect to the POC server of {ws} as {ADMIN_USER} within {timeout_s:g} s "
                        f"(is it started?): {e}"
                    ) from e
                logger.warning("%s: admin login failed (%s); retrying", caller, e)
                time.sleep(3.0)
        try:
            yield session
        finally:
            session.close()


def submit(workspace: str | os.PathLike | None, job_folder: str | os.PathLike, timeout_s: float = 60.0) -> str:
    """Submit a job folder through the admin API as the project admin.

    Args:
        workspace: POC workspace; ``None`` means :func:`default_workspace`.
        job_folder: folder holding ``meta.json`` and the app folders.
        timeout_s: how long to try to connect to the admin server.

    Returns:
        The job id.

    Raises:
        FileNotFoundError: if the job folder has no ``meta.json`` or the workspace was not prepared.
        RuntimeError: if the server cannot be reached or rejects the job.
    """
    ws = _workspace(workspace)
    job = Path(job_folder).absolute()
    if not (job / "meta.json").is_file():
        raise FileNotFoundError(f"submit: {job} is not a job folder (no meta.json).")
    # FLARE signs the submitted folder in place (.__nvfl_sig.json files): submit a copy so the
    # user's job folder stays clean.
    with tempfile.TemporaryDirectory(prefix="gia_submit_") as staging:
        staged = Path(staging) / job.name
        shutil.copytree(job, staged, ignore=shutil.ignore_patterns(".__nvfl_*"))
        with _admin_session(ws, timeout_s, "submit") as session:
            try:
                job_id = session.submit_job(str(staged))
            except Exception as e:
                raise RuntimeError(f"submit: the server rejected {job}: {e}") from e
    logger.info("submitted %s as job %s", job, job_id)
    return job_id


def wait(
    workspace: str | os.PathLike | None, job_id: str, timeout_s: float = 1800.0, poll_interval_s: float = 2.0
) -> str:
    """Wait until a job reaches a ``FINISHED:*`` status.

    Args:
        workspace: POC workspace; ``None`` means :func:`default_workspace`.
        job_id: id returned by :func:`submit`.
        timeout_s: how long to wait, > 0.
        poll_interval_s: seconds between status queries.

    Returns:
        The final status, :data:`COMPLETED` for a job that ran without error (others:
        ``FINISHED:EXECUTION_EXCEPTION``, ``FINISHED:ABORTED``, ...).

    Raises:
        ValueError: if ``timeout_s`` is not positive.
        TimeoutError: if the job is still running after ``timeout_s``.
        RuntimeError: if the server cannot be reached.
    """
    if not timeout_s > 0:
        raise ValueError(f"wait: timeout_s must be > 0, got {timeout_s!r}.")
    from nvflare.fuel.flare_api.api_spec import MonitorReturnCode

    ws = _workspace(workspace)
    with _admin_session(ws, min(timeout_s, 60.0), "wait") as session:
        try:
            rc, meta = session.monitor_job_and_return_job_meta(
                job_id, timeout=timeout_s, poll_interval=poll_interval_s
            )
            if rc == MonitorReturnCode.TIMEOUT:
                status = session.get_job_status(job_id)
                raise TimeoutError(f"wait: job {job_id} is still {status} after {timeout_s:g} s.")
        except TimeoutError:
            raise
        except Exception as e:
            raise RuntimeError(f"wait: could not follow job {job_id} on the POC server of {ws}: {e}") from e
    status = meta["status"]
    log = logger.info if status == COMPLETED else logger.warning
    log("job %s ended with status %s", job_id, status)
    return status


def download(
    workspace: str | os.PathLike | None, job_id: str, out_dir: str | os.PathLike, timeout_s: float = 120.0
) -> Path:
    """Download a finished job's results.

    Args:
        workspace: POC workspace; ``None`` means :func:`default_workspace`.
        job_id: id returned by :func:`submit`.
        out_dir: folder to put the result folder in; created if missing.
        timeout_s: how long to try to connect to the admin server.

    Returns:
        ``<out_dir>/<job_id>``, holding ``workspace/`` (the server's run directory: logs, ``app_server/``
        and whatever components wrote there), ``job/`` (the submitted job) and ``meta.json``.

    Raises:
        RuntimeError: if the server cannot be reached or returns no result.
    """
    ws = _workspace(workspace)
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    with _admin_session(ws, timeout_s, "download") as session:
        try:
            location = session.download_job_result(job_id, destination=str(out))
        except Exception as e:
            raise RuntimeError(f"download: job {job_id} could not be downloaded: {e}") from e
    if not location or not os.path.isdir(location):
        raise RuntimeError(f"download: the server returned no result folder for job {job_id} (got {location!r}).")
    logger.info("job %s downloaded to %s", job_id, location)
    return Path(location)


def _kill(procs: list, grace_s: float = 5.0) -> list[int]:
    import psutil

    tree = {}
    for proc in procs:
        try:
            for p in [proc, *proc.children(recursive=True)]:
                tree[p.pid] = p
        except psutil.NoSuchProcess:
            continue
    for p in tree.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(list(tree.values()), timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return sorted(tree)


def stop(workspace: str | os.PathLike | None = None, timeout_s: float = 60.0) -> list[int]:
    """Shut the POC system down and make sure none of its processes is left.

    Runs ``nvflare poc stop`` (skipped when nothing of the workspace runs), then waits until no
    process whose command line mentions the workspace remains; those still alive after
    ``timeout_s`` are terminated, then killed, with their children.

    Args:
        workspace: POC workspace; ``None`` means :func:`default_workspace`.
        timeout_s: how long to wait for a clean shutdown.

    Returns:
        The pids that had to be killed (empty after a clean shutdown).

    Raises:
        RuntimeError: if processes survive even SIGKILL.
    """
    ws = _workspace(workspace)
    deadline = time.monotonic() + timeout_s
    if find_processes(ws) and (ws / "project.yml").is_file():
        try:
            _nvflare(["poc", "stop"], ws, timeout_s)
        except RuntimeError as e:
            logger.warning("%s; killing the processes of %s instead", e, ws)
    while (left := find_processes(ws)) and time.monotonic() < deadline:
        time.sleep(1.0)
    killed = []
    if left:
        logger.warning("killing %d process(es) of %s still alive after %g s", len(left), ws, timeout_s)
        killed = _kill(left)
        left = find_processes(ws)
        if left:
            raise RuntimeError(f"stop: processes of {ws} survived SIGKILL: {[p.pid for p in left]}.")
    logger.info("POC system of %s is stopped", ws)
    return killed


def clean(workspace: str | os.PathLike | None = None, timeout_s: float = 60.0) -> None:
    """Stop the system if needed and delete the workspace.

    Runs ``nvflare poc clean`` (which also drops the workspace's startup kits from
    ``~/.nvflare/config.conf``) and removes whatever is left, including ``<workspace>.home``
    when :func:`poc_env` had to create it. A missing workspace is not an error.

    Args:
        workspace: POC workspace; ``None`` means :func:`default_workspace`.
        timeout_s: limit for stopping leftovers and for ``nvflare poc clean``.

    Raises:
        RuntimeError: if processes of the workspace cannot be stopped.
    """
    ws = _workspace(workspace)
    stop(ws, timeout_s=timeout_s)
    if (ws / "project.yml").is_file():
        try:
            _nvflare(["poc", "clean"], ws, timeout_s)
        except RuntimeError as e:
            logger.warning("%s; removing %s directly", e, ws)
    for path in (ws, _fallback_home(ws)):
        if path.exists():
            shutil.rmtree(path)
    logger.info("POC workspace %s removed", ws)


def run_job(
    workspace: str | os.PathLike | None,
    job_folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    n_clients: int = 3,
    port: int | None = None,
    timeout_s: float = 1800.0,
) -> tuple[str, Path]:
    """Run one job end to end: prepare, start, submit, wait, download, then stop and clean.

    Stop and clean run even when a step fails.

    Args:
        workspace: POC workspace (deleted at the end); ``None`` means :func:`default_workspace`.
        job_folder: job to submit.
        out_dir: folder to download the result into.
        n_clients: number of client sites.
        port: server port; ``None`` keeps FLARE's 8002.
        timeout_s: limit for the job to finish.

    Returns:
        ``(status, result_dir)``.

    Raises:
        Whatever the failing step raises (see :func:`prepare` ... :func:`download`).
    """
    ws = prepare(workspace, n_clients, port=port)
    try:
        start(ws)
        job_id = submit(ws, job_folder)
        status = wait(ws, job_id, timeout_s=timeout_s)
        return status, download(ws, job_id, out_dir)
    finally:
        clean(ws)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nvflare_gia.flare.poc", description="Run nvflare_gia jobs in a local FLARE POC system."
    )
    parser.add_argument(
        "-w",
        "--workspace",
        default=None,
        help=f"POC workspace (default: $NVFLARE_POC_WORKSPACE or {DEFAULT_WORKSPACE})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="create a fresh workspace and patch the class allow-list")
    p.add_argument("-n", "--n-clients", type=int, default=3)
    p.add_argument("--port", type=int, default=None, help="server port (default 8002)")
    p = sub.add_parser("start", help="start server and clients, wait until ready")
    p.add_argument("--timeout", type=float, default=120.0)
    p = sub.add_parser("submit", help="submit a job folder; prints the job id")
    p.add_argument("job_folder")
    p = sub.add_parser("wait", help="wait for a job; prints its status, exit 1 unless FINISHED:COMPLETED")
    p.add_argument("job_id")
    p.add_argument("--timeout", type=float, default=1800.0)
    p = sub.add_parser("download", help="download a job's results; prints the result folder")
    p.add_argument("job_id")
    p.add_argument("out_dir")
    p = sub.add_parser("stop", help="stop the system and any leftover process of the workspace")
    p.add_argument("--timeout", type=float, default=60.0)
    p = sub.add_parser("clean", help="stop if needed and delete the workspace")
    p = sub.add_parser("run", help="prepare, start, submit, wait, download, stop, clean")
    p.add_argument("job_folder")
    p.add_argument("out_dir")
    p.add_argument("-n", "--n-clients", type=int, default=3)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--timeout", type=float, default=1800.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m nvflare_gia.flare.poc [-w WS] <command> ...``.

    Results (a job id, a status, a folder) go to stdout, one per line; progress and errors are
    logged to stderr.

    Args:
        argv: arguments without the program name; ``None`` means ``sys.argv[1:]``.

    Returns:
        0 on success; 1 on an error, or when a waited-for job did not end ``FINISHED:COMPLETED``.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    ws = args.workspace
    result: object = None
    try:
        if args.command == "prepare":
            result = prepare(ws, args.n_clients, port=args.port)
        elif args.command == "start":
            start(ws, timeout_s=args.timeout)
        elif args.command == "submit":
            result = submit(ws, args.job_folder)
        elif args.command == "wait":
            result = wait(ws, args.job_id, timeout_s=args.timeout)
        elif args.command == "download":
            result = download(ws, args.job_id, args.out_dir)
        elif args.command == "stop":
            stop(ws, timeout_s=args.timeout)
        elif args.command == "clean":
            clean(ws)
        elif args.command == "run":
            status, path = run_job(
                ws, args.job_folder, args.out_dir, n_clients=args.n_clients, port=args.port, timeout_s=args.timeout
            )
            result = f"{status}\n{path}"
    except (RuntimeError, TimeoutError, ValueError, FileNotFoundError) as e:
        logger.error("%s", e)
        return 1
    if result is not None:
        sys.stdout.write(f"{result}\n")
    if args.command in ("wait", "run") and not str(result).startswith(COMPLETED):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
