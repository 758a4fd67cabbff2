#!/usr/bin/env bash
# Install and run the full test suite: everything on the pinned development stack, then the
# serving tests again on the lowest supported stack (transformers 5.0.0, diffusers 0.36.0), so
# both ends of the version ranges in pyproject.toml are tested. Extra arguments go to pytest.
# The lowest stack installs in the background while the first pass runs (it only writes .venv-oldest).
# Tests run in MII_AZURE_TEST_WORKERS processes (pytest-xdist, 2 by default), a test file per process at a
# time, so that one file's servers and models are shared as they are in a single process.
set -euo pipefail
cd "$(dirname "$0")/.."

oldest_log=$(mktemp)
VENV=.venv-oldest CONSTRAINTS=environments/constraints-oldest.txt EXTRAS=serve,diffusers,test AZURITE=0 \
    bash scripts/install.sh >"$oldest_log" 2>&1 &
oldest_install=$!

bash scripts/install.sh
status=0
parallel=(-n "${MII_AZURE_TEST_WORKERS:-2}" --dist loadfile)
.venv/bin/python -m pytest "${parallel[@]}" "$@" || status=$?

if ! wait "$oldest_install"; then
    cat "$oldest_log" >&2
    echo "Installing the lowest supported stack (.venv-oldest) failed; its log is above." >&2
    exit 1
fi
rm -f "$oldest_log"
# The Azure target's tests need azure-ai-ml, which is not part of the serving stack's version range;
# the harness's process tests (servers, signals, CLI) do not depend on the library versions.
.venv-oldest/bin/python -m pytest "${parallel[@]}" -m "serving and not azure and not harness" "$@" || status=$?
exit "$status"
