"""TensorRT-RTX's runtime cache file (`--runtime-cache`).

The runtime itself needs a GPU (none in CI): the file handling is tested against a
stand-in engine with the same four calls TensorRT-RTX's Python API has
(create_runtime_config, create_runtime_cache, deserialize, serialize, set_runtime_cache),
which is where the decisions are (load, refuse to overwrite, save atomically);
the command-line paths run for real with the engine skipped.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from converter import api
from converter.backends import get_backend, runtime_cache_for
from converter.backends.runtime_cache import RuntimeCache
from converter.cli.main import main
from converter.core.errors import ExitCode, InvalidInputError, UnsupportedError, UsageError
from converter.verification.compare import EngineRunner


class StandInCache:
    """What IRuntimeCache does that matters here: accepts only its own blobs, grows as kernels compile."""

    def __init__(self):
        self.kernels: list[str] = []

    def deserialize(self, blob: bytes) -> bool:
        if not bytes(blob).startswith(b"RTXC:"):
            return False  # another GPU / release, or not a cache at all
        self.kernels = bytes(blob)[5:].decode().split(",")
        return True

    def serialize(self) -> bytes:
        return b"RTXC:" + ",".join(self.kernels).encode()


class StandInConfig:
    def __init__(self):
        self.cache = None

    def create_runtime_cache(self):
        return StandInCache()

    def set_runtime_cache(self, cache) -> bool:
        self.cache = cache
        return True


class StandInEngine:
    """An engine that 'JIT-compiles' one kernel per run into the cache of its runtime config."""

    def __init__(self, kernel: str):
        self.kernel = kernel

    def create_runtime_config(self):
        return StandInConfig()

    def run(self, config: StandInConfig) -> None:
        if self.kernel not in config.cache.kernels:
            config.cache.kernels.append(self.kernel)


def _run(cache: RuntimeCache, engine: StandInEngine) -> None:
    engine.run(cache.runtime_config(engine))
    cache.save()


def test_cache_is_created_then_loaded_and_shared(tmp_path):
    path = tmp_path / "kernels.rtxcache"
    first = RuntimeCache.at(path)
    assert first.status()["status"] == "not used (no engine ran)"
    _run(first, StandInEngine("gemm"))
    _run(first, StandInEngine("softmax"))  # a second engine of the run shares the one cache object
    assert path.read_bytes() == b"RTXC:gemm,softmax"
    assert first.status() == {"path": str(path), "status": "created", "saved_bytes": 17}

    again = RuntimeCache.at(path)  # the next process starts from the file
    _run(again, StandInEngine("gemm"))
    assert again.loaded_bytes == 17 and again.status()["status"] == "loaded 17 bytes"
    assert path.read_bytes() == b"RTXC:gemm,softmax"
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, no temporary file left


def test_a_file_the_runtime_rejects_is_never_overwritten(tmp_path):
    path = tmp_path / "model.onnx"  # e.g. a typo: --runtime-cache model.onnx
    path.write_bytes(b"not a runtime cache")
    cache = RuntimeCache.at(path)
    _run(cache, StandInEngine("gemm"))
    assert path.read_bytes() == b"not a runtime cache"
    assert cache.rejected and "left as it is" in cache.status()["status"]


def test_an_empty_file_is_a_new_cache(tmp_path):
    path = tmp_path / "kernels.rtxcache"
    path.touch()
    cache = RuntimeCache.at(path)
    _run(cache, StandInEngine("gemm"))
    assert path.read_bytes() == b"RTXC:gemm"


@pytest.mark.parametrize(
    "where, message",
    [("folder", "not a regular file"), ("/dev/null", "not a regular file"), ("nowhere/k.rtxcache", "does not exist")],
)
def test_bad_paths_are_refused_before_any_work(tmp_path, where, message):
    (tmp_path / "folder").mkdir()
    path = where if where.startswith("/") else tmp_path / where
    with pytest.raises(InvalidInputError, match=message):
        RuntimeCache.at(path)


def test_full_tensorrt_has_no_runtime_cache(monkeypatch, tmp_path):
    rtx = get_backend("tensorrt-rtx")
    assert runtime_cache_for("tensorrt-rtx", tmp_path / "k.rtxcache").path == tmp_path / "k.rtxcache"
    assert runtime_cache_for("tensorrt-rtx", None) is None
    monkeypatch.setattr(type(rtx), "supports_runtime_cache", False)
    with pytest.raises(UnsupportedError, match="no runtime cache"):
        runtime_cache_for("tensorrt-rtx", tmp_path / "k.rtxcache")


def test_engine_runner_hands_the_cache_to_the_backend(tmp_path):
    seen = {}

    class Backend:
        def run(self, engine_path, feeds, runtime_cache=None):
            seen["cache"] = runtime_cache
            return {"y": feeds["x"]}

    cache = RuntimeCache.at(tmp_path / "k.rtxcache")
    EngineRunner(Backend(), tmp_path / "m.engine", runtime_cache=cache).run({"x": np.ones(2, np.float32)})
    assert seen["cache"] is cache


def test_verify_reports_the_cache_unused_without_a_gpu(tmp_path, tiny_onnx, tiny_engine):
    if get_backend("tensorrt-rtx").can_run()[0]:
        pytest.skip("a GPU is here: the engine runs")
    engine = tmp_path / "tiny.engine"
    shutil.copy(tiny_engine, engine)
    result = api.verify(str(tiny_onnx), [str(engine)], backend="tensorrt-rtx", runtime_cache=tmp_path / "k.rtxcache")
    assert result.report["runtime_cache"]["status"] == "not used (no engine ran)"
    assert not (tmp_path / "k.rtxcache").exists()
    json.dumps(result.report)


def test_verify_without_an_engine_says_the_cache_has_nothing_to_keep(tmp_path, tiny_onnx):
    with pytest.raises(UsageError, match="no engine among the candidates"):
        api.verify(str(tiny_onnx), [str(tiny_onnx)], runtime_cache=tmp_path / "k.rtxcache")


def test_cli_refuses_a_folder_as_runtime_cache(tmp_path, tiny_onnx, tiny_engine):
    result = CliRunner().invoke(main, ["verify", str(tiny_onnx), str(tiny_engine), "--runtime-cache", str(tmp_path)])
    assert result.exit_code == ExitCode.INVALID_INPUT and "--runtime-cache" in result.output
    assert "Traceback" not in result.output


def test_convert_checks_the_cache_path_first_and_reports_it(tmp_path):
    from tests.conftest import TINY

    with pytest.raises(InvalidInputError, match="--runtime-cache"):
        api.convert(TINY, tmp_path / "bad", runtime_cache=tmp_path / "no" / "k.rtxcache", use_cache=False)
    assert not (tmp_path / "bad").exists()  # refused before any stage ran
    result = api.convert(
        TINY, tmp_path / "c", runtime_cache=tmp_path / "k.rtxcache", target_gpus=["sm86"], use_cache=False
    )
    expected = "not used (no engine ran)" if not get_backend("tensorrt-rtx").can_run()[0] else "created"
    assert result.report["runtime_cache"]["status"] == expected
