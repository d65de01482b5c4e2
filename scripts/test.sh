#!/usr/bin/env bash
# Install everything, then run the whole test suite (the command CI runs).
# Pass pytest arguments through, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
python3 -m pytest -q -ra "$@" tests
