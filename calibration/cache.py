"""Calibration results: collection with a cache, activation ranges, TensorRT calibration tables.

The cache file is named by a hash of the model (graph and weights), the calibration
data (every batch's input shapes and bytes) and what was collected (tensor names,
histograms, per-channel maxima, Gram matrices). It stores the streamed statistics,
not one method's ranges, so the ranges of any method (the last part of the key) come
from it without running the model again: a second run skips collection.

`write_trt_table` exports ranges as a TensorRT calibration table (the text format
`IInt8Calibrator.write_calibration_cache` writes: a header line, then
`tensor: <float32 scale, big-endian hex>` with scale = amax / 127), for builders that
take implicit int8 calibration instead of Q/DQ.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from calibration.data import CalibrationData
from calibration.observers import compute_amax
from calibration.stats import BINS, TensorStats, collect_statistics
from converter.core import external_data
from converter.core.errors import InvalidInputError
from converter.core.model_io import atomic_path, sha256_model

CACHE_FORMAT = "trtforge-calibration/1"
_MEMO: dict[tuple, tuple[onnx.ModelProto, Calibration]] = {}
_REMEMBERED: list[tuple[str, CalibrationData, Calibration]] = []  # at most one: (values fingerprint, data, stats)


@dataclass
class Calibration:
    """Statistics of the tensors asked for, and where they came from."""

    stats: dict[str, TensorStats]
    key: str
    seconds: float
    from_cache: bool
    samples: int
    shapes: list[dict[str, list[int]]] = field(default_factory=list)
    runs: int = 0

    def ranges(self, method: str, fmt: str = "int8", percentile: float = 99.99) -> dict[str, float]:
        if method != "minmax" and any(s.count and not s.hist.any() for s in self.stats.values()):
            raise InvalidInputError(f"calibration method '{method}' needs histograms; these statistics have none")
        return {n: compute_amax(s, method, fmt, percentile) for n, s in self.stats.items()}


def stats_key(model: onnx.ModelProto, data: CalibrationData, tensors: list[str], what: str) -> str:
    digest = hashlib.sha256()
    for part in (CACHE_FORMAT, sha256_model(model), data.fingerprint(), json.dumps(sorted(tensors)), what, str(BINS)):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def save_stats(path: Path, stats: dict[str, TensorStats], meta: dict) -> None:
    arrays: dict[str, np.ndarray] = {}
    entries = []
    for i, (name, s) in enumerate(stats.items()):
        entries.append(
            {
                "name": name,
                "count": s.count,
                "nonfinite": s.nonfinite,
                "min": s.min,
                "max": s.max,
                "hist_range": s.hist_range,
                "gram_rows": s.gram_rows,
            }
        )
        arrays[f"hist_{i}"] = s.hist
        if s.channel_amax is not None:
            arrays[f"channel_{i}"] = s.channel_amax
        if s.gram is not None:
            arrays[f"gram_{i}"] = s.gram
    header = json.dumps({"format": CACHE_FORMAT, "tensors": entries, **meta})
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, header=np.frombuffer(header.encode(), np.uint8), **arrays)


def load_stats(path: Path) -> tuple[dict[str, TensorStats], dict] | None:
    """Statistics from a cache file; None when it is missing or unreadable (then recollect)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode())
            if header.get("format") != CACHE_FORMAT:
                return None
            stats = {}
            for i, e in enumerate(header.pop("tensors")):
                s = TensorStats(
                    e["name"],
                    e["count"],
                    e["nonfinite"],
                    e["min"],
                    e["max"],
                    data[f"hist_{i}"].copy(),
                    e["hist_range"],
                    gram_rows=e["gram_rows"],
                )
                s.channel_amax = data[f"channel_{i}"].copy() if f"channel_{i}" in data.files else None
                s.gram = data[f"gram_{i}"].copy() if f"gram_{i}" in data.files else None
                stats[s.name] = s
            return stats, header
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None


def calibrate(
    model: onnx.ModelProto,
    tensors: list[str],
    data: CalibrationData,
    cache_dir: str | Path | None = None,
    channels: list[str] | tuple[str, ...] = (),
    gram: list[str] | tuple[str, ...] = (),
    budget_mb: float = 128.0,
    histogram: bool = True,
) -> Calibration:
    """Statistics of `tensors` over `data`, from the cache when this model and data were seen before.

    `histogram=False` keeps min/max only (enough for minmax ranges and SmoothQuant):
    about half the collection time.
    """
    if data is None:
        raise InvalidInputError("calibration data is required (give --calib DIR, or use a demo's sample data)")
    start = time.perf_counter()
    what = json.dumps({"channels": sorted(channels), "gram": sorted(gram), "histogram": histogram})
    memo_key = (id(model), id(data), what)
    held = _MEMO.get(memo_key)
    if held is not None and held[0] is model and set(tensors) <= set(held[1].stats):
        cal = held[1]
        return Calibration(
            {n: cal.stats[n] for n in tensors}, cal.key, time.perf_counter() - start, True, cal.samples, cal.shapes, 0
        )
    if not channels and not gram and not histogram:
        remembered = _remembered(model, data, tensors)
        if remembered is not None:
            return remembered
    key = stats_key(model, data, tensors, what) if cache_dir else ""
    path = Path(cache_dir) / f"calib-{key}.npz" if cache_dir else None
    if path is not None and path.exists():
        loaded = load_stats(path)
        if loaded is not None:
            stats, meta = loaded
            cal = Calibration(
                stats, key, time.perf_counter() - start, True, meta.get("samples", 0), meta.get("shapes", []), 0
            )
            _MEMO.clear()
            _MEMO[memo_key] = (model, cal)
            return cal
    result = collect_statistics(model, tensors, data, histogram, channels, gram, budget_mb)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_stats(path, result.stats, {"samples": result.samples, "shapes": result.shapes, "source": data.source})
    cal = Calibration(result.stats, key, time.perf_counter() - start, False, result.samples, result.shapes, result.runs)
    _MEMO.clear()  # one model's statistics at a time: sensitivity analysis re-asks for subsets of them
    _MEMO[memo_key] = (model, cal)
    return cal


def values_fingerprint(model: onnx.ModelProto) -> str:
    """Hash of what decides every tensor's values: the nodes (in any order), the weights' bytes
    and the inputs' names and element types; not value_info, node order or file layout, which
    differ between two exports of one graph."""
    digest = hashlib.sha256()
    for node in sorted(n.SerializeToString(deterministic=True) for n in model.graph.node):
        digest.update(node)
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        digest.update(f"{init.name}|{init.data_type}|{list(init.dims)}".encode())
        if external_data.is_mapped(init):  # one weight's bytes in memory at a time
            digest.update(external_data.read_bytes(init))
        else:
            digest.update(onnx.numpy_helper.to_array(init).tobytes())
    for graph_input in model.graph.input:
        digest.update(f"{graph_input.name}|{graph_input.type.tensor_type.elem_type}".encode())
    return digest.hexdigest()


def remember(
    model: onnx.ModelProto,
    data: CalibrationData,
    stats: dict[str, TensorStats],
    samples: int = 0,
    shapes: list | None = None,
) -> None:
    """Hold min/max statistics of `model` known without running it (an exact rewrite's output).

    A later `calibrate(..., histogram=False)` of a model with the same values (this one,
    or its re-export by the pass manager) over the same data gets them from memory; any
    other model, data or request still runs the model. One model is held at a time.
    """
    minmax_only = {n: replace(s, channel_amax=None, gram=None) for n, s in stats.items()}
    cal = Calibration(minmax_only, "", 0.0, True, samples, shapes or [], 0)
    _REMEMBERED[:] = [(values_fingerprint(model), data, cal)]


def _remembered(model: onnx.ModelProto, data: CalibrationData, tensors: list[str]) -> Calibration | None:
    """The held statistics if they cover this request; the model is hashed only when data and tensors match."""
    if not _REMEMBERED:
        return None
    fingerprint, held_data, cal = _REMEMBERED[0]
    if held_data is not data or not set(tensors) <= set(cal.stats) or values_fingerprint(model) != fingerprint:
        return None
    return Calibration({n: cal.stats[n] for n in tensors}, cal.key, 0.0, True, cal.samples, cal.shapes, 0)


def write_trt_table(path: str | Path, ranges: dict[str, float], header: str = "TRT-100100-EntropyCalibration2") -> Path:
    """A TensorRT calibration table: `name: hex(float32 big-endian scale)` with scale = amax / 127."""
    lines = [header]
    for name, amax in sorted(ranges.items()):
        if math.isfinite(amax) and amax > 0:
            lines.append(f"{name}: {struct.pack('>f', amax / 127.0).hex()}")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)


def read_trt_table(path: str | Path) -> dict[str, float]:
    """Ranges (amax) from a TensorRT calibration table written by `write_trt_table` or TensorRT."""
    ranges = {}
    for line in Path(path).read_text().splitlines()[1:]:
        name, _, value = line.rpartition(": ")
        if name:
            ranges[name] = struct.unpack(">f", bytes.fromhex(value.strip()))[0] * 127.0
    return ranges
