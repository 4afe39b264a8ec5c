#!/usr/bin/env bash
# Download a job's results to OUT_DIR/JOB_ID (server run dir under workspace/); prints that folder.
# Usage: poc/download.sh JOB_ID OUT_DIR
# Workspace: ${NVFLARE_POC_WORKSPACE:-/tmp/nvflare_gia_poc}; interpreter: ${PYTHON:-python} (the venv with nvflare_gia).
set -euo pipefail
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m nvflare_gia.flare.poc -w "${NVFLARE_POC_WORKSPACE:-/tmp/nvflare_gia_poc}" download "$@"
