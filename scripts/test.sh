#!/usr/bin/env bash
# Install everything, then run the whole test suite (the command CI runs).
# Pass pytest arguments through, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
# Two workers (pytest-xdist): the machines CI runs on have two cores; examples that depend
# on each other share one worker (--dist loadgroup, tests/converter/test_examples.py).
python3 -m pytest -q -ra -n "${TRTFORGE_TEST_WORKERS:-2}" --dist loadgroup "$@" tests
