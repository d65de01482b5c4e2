#!/usr/bin/env bash
# Install trtforge and everything it needs (idempotent; fast when already installed).
# torch comes first and pinned: torch==2.13.0 is the CPU wheel; an open range would pull
# a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q -e ".[torch,demos,rtx,dev]"
