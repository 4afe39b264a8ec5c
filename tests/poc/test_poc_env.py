"""``poc_env``: the environment ``nvflare poc`` and the sites it starts run in (no POC is started)."""

from __future__ import annotations

import os
from pathlib import Path

import nvflare_gia
from nvflare_gia.flare.poc import poc_env


def test_poc_env_puts_the_folder_holding_nvflare_gia_first_on_pythonpath(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    entries = poc_env(tmp_path / "ws")["PYTHONPATH"].split(os.pathsep)
    assert Path(entries[0]) == Path(nvflare_gia.__file__).resolve().parents[1]
    assert entries[1:] == ["/elsewhere"]
    assert not (Path(entries[0]) / "__init__.py").exists(), "a package folder itself on the path shadows top-level modules"
