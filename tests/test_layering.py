"""The core (attack, defenses, metrics, data, models, training, audit) never imports nvflare."""

from __future__ import annotations

import subprocess
import sys

CORE_MODULES = (
    "nvflare_gia.attack",
    "nvflare_gia.defenses",
    "nvflare_gia.metrics",
    "nvflare_gia.data",
    "nvflare_gia.models",
    "nvflare_gia.training",
    "nvflare_gia.audit",
    "nvflare_gia.bench",
)


def test_core_packages_import_without_nvflare():
    code = (
        "import importlib, sys\n"
        f"for name in {CORE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'nvflare' or m.startswith('nvflare.'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"core imports nvflare modules: {result.stdout.strip()}"


def test_flare_adapters_do_import_nvflare():
    # guards the check above against a vacuous pass (e.g. a broken sys.modules filter)
    code = "import sys, nvflare_gia.flare.widget; print(any(m.startswith('nvflare.') for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "True", result.stderr
