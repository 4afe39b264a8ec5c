#!/usr/bin/env bash
# Create a fresh POC workspace (server + site-1..site-N, default 3) whose sites allow nvflare. and nvflare_gia. classes.
# Usage: poc/prepare.sh [N_CLIENTS] [--port PORT]
# Workspace: ${NVFLARE_POC_WORKSPACE:-/tmp/nvflare_gia_poc}; interpreter: ${PYTHON:-python} (the venv with nvflare_gia).
set -euo pipefail
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m nvflare_gia.flare.poc -w "${NVFLARE_POC_WORKSPACE:-/tmp/nvflare_gia_poc}" prepare -n "${1:-3}" "${@:2}"
