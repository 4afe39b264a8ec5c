#!/usr/bin/env bash
# Stop the POC system if it runs and delete the workspace.
# Usage: poc/clean.sh 
# Workspace: ${NVFLARE_POC_WORKSPACE:-/tmp/nvflare_gia_poc}; interpreter: ${PYTHON:-python} (the venv with nvflare_gia).
set -euo pipefail
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m nvflare_gia.flare.poc -w "${NVFLARE_POC_WORKSPACE:-/tmp/nvflare_gia_poc}" clean "$@"
