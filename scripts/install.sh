#!/usr/bin/env bash
# Create .venv with everything mii_azure, its tests and its demo need, on a CPU-only machine.
# Usage: bash scripts/install.sh            (idempotent; safe to run again)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
# The stock pip 23 cannot resolve azure-ai-ml's dependency tree.
python -m pip install --quiet --upgrade pip
# One resolver run for everything: azureml-inference-server-http and azure-ai-ml disagree on
# OpenTelemetry when installed one after the other. torch==2.13.0 selects the CPU build on this
# machine (a bare "torch" may pull a multi-GB CUDA build).
python -m pip install --quiet -c environments/constraints-dev.txt \
    torch==2.13.0 -e ".[serve,diffusers,azure,test]"
# DeepSpeed builds from source against the installed torch; no CUDA ops on a CPU machine.
if ! python -c "import deepspeed" >/dev/null 2>&1; then
    DS_BUILD_OPS=0 python -m pip install --quiet --no-build-isolation -c environments/constraints-dev.txt deepspeed
fi
python -m pip check
