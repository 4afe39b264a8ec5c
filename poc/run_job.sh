#!/usr/bin/env bash
# Whole cycle: prepare (3 sites), start, submit, wait, download, stop, clean. Prints status and result folder.
# Usage: poc/run_job.sh JOB_FOLDER OUT_DIR [--port PORT] [--timeout S]
# Workspace: ${NVFLARE_POC_WORKSPACE:-/tmp/nvflare_gia_poc}; interpreter: ${PYTHON:-python} (the venv with nvflare_gia).
set -euo pipefail
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m nvflare_gia.flare.poc -w "${NVFLARE_POC_WORKSPACE:-/tmp/nvflare_gia_poc}" run "$@"
