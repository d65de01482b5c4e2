from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# No artifact cache unless a test asks for one: an identical conversion in another test would
# otherwise come back as a cache hit, not a run (tests/converter/test_artifact_cache.py uses it).
os.environ.setdefault("TRTFORGE_CACHE", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel workers share the machine's cores: one compute thread each (torch, onnxruntime),
    # so no worker spins waiting for a core another one holds.
    os.environ.setdefault("TRTFORGE_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

TINY = "tests.tiny_models:conv_net"


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    """module:factory specs ('tests.tiny_models:...') import relative to the repo root."""
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    from converter import api

    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    os.chdir(REPO)
    api.export(TINY, path)
    return path


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory, tiny_onnx) -> Path:
    from converter import api
    from converter.pipelines.model_ref import resolve_spec

    path = tmp_path_factory.mktemp("tiny_engine") / "tiny.engine"
    api.build(tiny_onnx, path, backend="tensorrt-rtx", shapes=resolve_spec(TINY).profiles, target_gpus=["sm86"])
    return path
