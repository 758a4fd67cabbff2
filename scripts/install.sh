#!/usr/bin/env bash
# Create a virtual environment with everything mii_azure, its tests and its demo need, on a
# CPU-only machine. Idempotent: running it again only adds what is missing.
#
#   bash scripts/install.sh                      # .venv, the pinned development stack
#   VENV=.venv-oldest CONSTRAINTS=environments/constraints-oldest.txt EXTRAS=serve,diffusers,test AZURITE=0 \
#       bash scripts/install.sh                   # the lowest supported serving stack (no Azurite)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CONSTRAINTS=${CONSTRAINTS:-environments/constraints-dev.txt}
EXTRAS=${EXTRAS:-serve,diffusers,azure,cost,test,clients,mlflow,batch}
DEEPSPEED=${DEEPSPEED:-1}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# The stock pip 23 cannot resolve azure-ai-ml's dependency tree.
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# One resolver run for everything: azureml-inference-server-http and azure-ai-ml disagree on
# OpenTelemetry when installed one after the other. torch==2.13.0 selects the CPU build on this
# machine (a bare "torch" may pull a multi-GB CUDA build).
# pip compiles every module at install time: with PYTHONDONTWRITEBYTECODE=1 (set on CI machines) Python
# never caches bytecode itself, and without it each process (every test server) recompiles torch and
# transformers from source: 29 s instead of 11 s to import them here.
"$VENV/bin/python" -m pip install --quiet -c "$CONSTRAINTS" torch==2.13.0 -e ".[$EXTRAS]"
# DeepSpeed builds from source against the installed torch; no CUDA ops on a CPU machine.
if [ "$DEEPSPEED" = 1 ] && ! "$VENV/bin/python" -c "import deepspeed" >/dev/null 2>&1; then
    DS_BUILD_OPS=0 "$VENV/bin/python" -m pip install --quiet --no-build-isolation -c "$CONSTRAINTS" deepspeed
fi
# The project itself is installed in place (editable): compile it too, for the same reason.
"$VENV/bin/python" -m compileall -q mii_azure >/dev/null
"$VENV/bin/python" -m pip check
# The Azure Storage emulator the Azure tests upload to (tests/azure/azurite.py looks here). 3.35.0 is the
# newest Azurite that runs on Node 20; a project-local folder keeps it out of the system.
AZURITE_VERSION=${AZURITE_VERSION:-3.35.0}
if [ "${AZURITE:-1}" = 1 ] && [ ! -x .node/node_modules/.bin/azurite ]; then
    if command -v npm >/dev/null 2>&1; then
        npm install --no-audit --no-fund --silent --prefix .node "azurite@$AZURITE_VERSION"
    else
        echo "npm not found: the Azure tests (tests/azure) need Azurite; install Node.js 20+ and rerun." >&2
    fi
fi
