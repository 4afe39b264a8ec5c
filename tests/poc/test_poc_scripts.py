"""``poc/*.sh``: each script hands its arguments to ``python -m nvflare_gia.flare.poc`` in a form its
parser accepts (checked with a stand-in interpreter that only parses them; no POC is started)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

POC_DIR = Path(__file__).resolve().parents[2] / "poc"


@pytest.fixture
def parse_only_python(tmp_path: Path) -> Path:
    """An interpreter for ``$PYTHON`` that parses ``-m nvflare_gia.flare.poc ARGS`` and prints them as JSON."""
    script = tmp_path / "python"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "from nvflare_gia.flare.poc import _parser\n"
        "assert sys.argv[1:3] == ['-m', 'nvflare_gia.flare.poc'], sys.argv\n"
        "print(json.dumps(vars(_parser().parse_args(sys.argv[3:]))))\n"
    )
    script.chmod(0o755)
    return script


def _run_script(name: str, args: list[str], python: Path, workspace: Path) -> dict:
    env = {**os.environ, "PYTHON": str(python), "NVFLARE_POC_WORKSPACE": str(workspace)}
    proc = subprocess.run(["bash", str(POC_DIR / name), *args], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize(
    ("args", "n_clients", "port"),
    [([], 3, None), (["2"], 2, None), (["2", "--port", "9100"], 2, 9100), (["--port", "9100"], 3, 9100)],
)
def test_prepare_script_accepts_every_usage_form(args, n_clients, port, parse_only_python, tmp_path):
    parsed = _run_script("prepare.sh", args, parse_only_python, tmp_path / "ws")
    assert (parsed["command"], parsed["n_clients"], parsed["port"], parsed["workspace"]) == ("prepare", n_clients, port, str(tmp_path / "ws"))
