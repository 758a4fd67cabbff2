#!/usr/bin/env bash
# Install and run the full test suite: everything on the pinned development stack, then the
# serving tests again on the lowest supported stack (transformers 5.0.0, diffusers 0.36.0), so
# both ends of the version ranges in pyproject.toml are tested. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
.venv/bin/python -m pytest "$@"

VENV=.venv-oldest CONSTRAINTS=environments/constraints-oldest.txt EXTRAS=serve,diffusers,test \
    bash scripts/install.sh
# The Azure target's tests need azure-ai-ml, which is not part of the serving stack's version range;
# the harness's process tests (servers, signals, CLI) do not depend on the library versions.
.venv-oldest/bin/python -m pytest -m "serving and not azure and not harness" "$@"
