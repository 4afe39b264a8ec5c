"""Shared fixtures of the POC tests: a private HOME, a free port, admin steps in their own process,
and a process check independent of poc."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest


@pytest.fixture
def poc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, writable HOME so ``~/.nvflare/config.conf`` of the machine is left alone."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("NVFLARE_POC_WORKSPACE", raising=False)
    return home


@pytest.fixture
def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_mentioning(path: Path) -> list[tuple[int, str]]:
    """Live processes (other than this one, zombies excluded) whose command line contains ``path``."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if proc.info["pid"] != os.getpid() and proc.info["status"] != psutil.STATUS_ZOMBIE and str(path) in cmdline:
            found.append((proc.info["pid"], cmdline))
    return found


@pytest.fixture(scope="session")
def processes_mentioning() -> Callable[[Path], list[tuple[int, str]]]:
    """:func:`_processes_mentioning` as a fixture (test modules cannot import conftest)."""
    return _processes_mentioning


def _admin(workspace: Path, *args: str, timeout_s: float) -> subprocess.CompletedProcess:
    """Run an admin step the way ``poc/*.sh`` does: ``python -m nvflare_gia.flare.poc`` in its own
    process. (In-process admin sessions break after other tests have used FLARE's serializer in
    this pytest process: ``'None' is not an instance of 'bytes'``.)"""
    return subprocess.run(
        [sys.executable, "-m", "nvflare_gia.flare.poc", "-w", str(workspace), *args],
        capture_output=True, text=True, timeout=timeout_s + 120, check=False,
    )


@pytest.fixture(scope="session")
def poc_admin() -> Callable[..., subprocess.CompletedProcess]:
    """:func:`_admin` as a fixture."""
    return _admin
