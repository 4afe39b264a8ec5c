#!/usr/bin/env bash
# Create a fresh POC workspace (server + site-1..site-N, default 3) whose sites allow nvflare. and nvflare_gia. classes.
# Usage: poc/prepare.sh [N_CLIENTS] [--port PORT]
# Workspace: ${NVFLARE_POC_WORKSPACE:-/tmp/nvflare_gia_poc}; interpreter: ${PYTHON:-python} (the venv with nvflare_gia).
set -euo pipefail
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
n_clients=3
if [[ $# -gt 0 && $1 != -* ]]; then
    n_clients=$1
    shift
fi
exec "${PYTHON:-python}" -m nvflare_gia.flare.poc -w "${NVFLARE_POC_WORKSPACE:-/tmp/nvflare_gia_poc}" prepare -n "$n_clients" "$@"
