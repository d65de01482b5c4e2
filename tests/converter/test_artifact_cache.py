"""The artifact cache: verified lookups, least-recently-used eviction, concurrent writers, and
builds / conversions that come back from it (a changed weight byte misses)."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import onnx
import pytest

from converter import api
from converter.core.artifact_cache import ArtifactCache, cache_key


def _file(path, size: int, byte: int = 1):
    path.write_bytes(bytes([byte]) * size)
    return path


def test_a_stored_entry_comes_back_and_a_corrupted_one_is_discarded(tmp_path):
    cache = ArtifactCache(tmp_path / "c")
    key = cache_key("x", 1)
    assert cache.lookup(key).status == "miss"
    assert cache.store(key, {"engine": _file(tmp_path / "e", 1000)})
    found = cache.lookup(key)
    assert found.status == "hit" and (found.path / "engine").read_bytes() == bytes([1]) * 1000
    data = bytearray((found.path / "engine").read_bytes())
    data[500] ^= 0xFF  # one flipped bit on disk
    (found.path / "engine").write_bytes(bytes(data))
    assert cache.lookup(key).status == "corrupt"
    assert not (cache.folder / key).exists() and cache.lookup(key).status == "miss"


def test_least_recently_used_entries_go_first_and_an_oversized_one_is_not_stored(tmp_path):
    cache = ArtifactCache(tmp_path / "c", max_bytes=2500)
    for index in range(3):
        assert cache.store(f"k{index}", {"f": _file(tmp_path / f"f{index}", 1000)})
        time.sleep(0.02)  # entry times order the eviction
    # 3000 bytes > 2500: the oldest went when the third arrived
    assert [cache.lookup(f"k{i}").status for i in range(3)] == ["miss", "hit", "hit"]
    cache.lookup("k1")  # k1 used last: k2 is now the least recently used
    time.sleep(0.02)
    os.utime(cache.folder / "k1")
    assert cache.store("k3", {"f": _file(tmp_path / "f3", 1000)})
    assert [cache.lookup(k).status for k in ("k1", "k2", "k3")] == ["hit", "miss", "hit"]
    assert not cache.store("big", {"f": _file(tmp_path / "big", 3000)})


def _store_many(folder: str, source: str, rounds: int) -> None:
    cache = ArtifactCache(folder, max_bytes=10_000)
    for index in range(rounds):
        cache.store(f"k{index % 5}", {"f": Path(source)})


def test_two_writers_at_once_leave_whole_entries_only(tmp_path):
    source = _file(tmp_path / "src", 3000, byte=7)
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_store_many, args=(str(tmp_path / "c"), str(source), 20)) for _ in range(2)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    cache = ArtifactCache(tmp_path / "c", max_bytes=10_000)
    left = [p.name for p in cache.folder.iterdir() if not p.name.startswith(".lock")]
    assert not [name for name in left if name.startswith(".tmp-")]  # no half-written scratch folders
    assert all(cache.lookup(name).status == "hit" for name in left)  # every entry verifies
    assert sum(p.stat().st_size for e in cache.folder.glob("k*") for p in e.iterdir()) <= 10_000


@pytest.fixture()
def tiny_copy(tiny_onnx, tmp_path):
    path = tmp_path / "tiny.onnx"
    path.write_bytes(tiny_onnx.read_bytes())
    return path


def test_build_reuses_the_engine_and_a_changed_weight_byte_misses(tiny_copy, tmp_path):
    pytest.importorskip("tensorrt_rtx")
    cache = tmp_path / "cache"
    options = {"backend": "tensorrt-rtx", "target_gpus": ["sm86"], "cache_dir": cache, "use_cache": True}
    first = api.build(tiny_copy, tmp_path / "a.engine", **options)
    second = api.build(tiny_copy, tmp_path / "b.engine", **options)
    assert (first.sidecar["cache"], second.sidecar["cache"]) == ("miss", "hit")
    assert (tmp_path / "a.engine").read_bytes() == (tmp_path / "b.engine").read_bytes()
    assert json.loads((tmp_path / "b.engine.json").read_text())["cache"] == "hit"
    model = onnx.load(str(tiny_copy))
    weight = next(t for t in model.graph.initializer if len(t.raw_data) > 8)
    raw = bytearray(weight.raw_data)
    raw[0] ^= 1  # flip one bit of one weight
    weight.raw_data = bytes(raw)
    onnx.save(model, str(tiny_copy))
    assert api.build(tiny_copy, tmp_path / "c.engine", **options).sidecar["cache"] == "miss"
    assert api.build(tiny_copy, tmp_path / "d.engine", **{**options, "use_cache": False}).sidecar.get("cache") is None


def test_an_identical_conversion_is_copied_from_the_cache(tiny_copy, tmp_path):
    pytest.importorskip("tensorrt_rtx")
    options = {"target_gpus": ["sm86"], "cache_dir": tmp_path / "cache", "use_cache": True}
    first = api.convert(str(tiny_copy), tmp_path / "one", **options)
    second = api.convert(str(tiny_copy), tmp_path / "two", **options)
    assert first.report["cache"]["status"] == "miss" and second.report["cache"]["status"] == "hit"
    assert list(second.report["stages"]) == ["cache", "write"]  # nothing ran again
    assert second.report["passed"] == first.report["passed"]
    assert (tmp_path / "two" / "model.engine").read_bytes() == (tmp_path / "one" / "model.engine").read_bytes()
    again = api.convert(str(tiny_copy), tmp_path / "three", precision="fp16", **options)
    assert again.report["cache"]["status"] == "miss"  # another recipe is another key


def test_the_cache_stores_this_runs_files_only_and_bad_inputs_are_input_errors(tiny_copy, tmp_path):
    pytest.importorskip("tensorrt_rtx")
    from converter.core.errors import InvalidInputError

    options = {"target_gpus": ["sm86"], "cache_dir": tmp_path / "cache", "use_cache": True}
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "model.onnx.data").write_bytes(b"an older run's weights")
    api.convert(str(tiny_copy), tmp_path / "one", **options)
    api.convert(str(tiny_copy), tmp_path / "two", **options)
    assert not (tmp_path / "two" / "model.onnx.data").exists()  # not this run's: never cached
    with pytest.raises(InvalidInputError):
        api.convert(str(tiny_copy), tmp_path / "three", inputs=tmp_path, **options)  # a folder
