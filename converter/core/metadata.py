"""The `trtforge.*` keys trtforge writes into an ONNX model's metadata, and their one reader/writer.

`export` records where a model came from and where its real sample data comes from, so
that later stages (verify, quantize, drop-blocks) working on the ONNX file alone find
the same real data. Every stage reads and writes these keys through this module.
"""

from __future__ import annotations

import onnx

SOURCE = "trtforge.source"  # the demo name or module:factory spec the model was exported from
SAMPLE_DATA = "trtforge.sample_data"  # where its real sample inputs come from (a demo name or a spec)
TASK = "trtforge.task"  # "classification", "embedding", "language-model", ...
EXPORTER = "trtforge.exporter"  # "torchscript" or "dynamo"
PROFILES = "trtforge.profiles"  # JSON min/opt/max per input: the shapes build uses by default
KV_CACHE = "trtforge.kv_cache"  # JSON CacheLayout of a decoder exported with its cache (core/kv_cache.py)
DROPPED_BLOCKS = "trtforge.drop_blocks"  # comma-separated units drop-blocks removed


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """All metadata entries of `model` as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def metadata_value(model: onnx.ModelProto, key: str, default: str = "") -> str:
    """One metadata entry, or `default` when the model does not carry it."""
    return next((p.value for p in model.metadata_props if p.key == key), default)


def write_metadata(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Set `entries` on `model` (replacing those keys, keeping every other entry), in key order."""
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in sorted(entries.items()):
        model.metadata_props.add(key=key, value=value)
