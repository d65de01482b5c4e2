"""Polygraphy's input/output data files (`polygraphy run --save-inputs x.json` / `--load-inputs`).

The format is Polygraphy's JSON serialisation: a list with one mapping per iteration,
input name -> an encoded ndarray `{"array": base64 of np.save's bytes, "polygraphy_class":
"ndarray"}` (older files: the key `polygraphy_serialized_json_type`). trtforge reads and
writes it so `polygraphy run --load-inputs` and `trtforge verify --load-inputs` can share
one file. Arrays are loaded without pickle; anything else in the file is an error naming it.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path

import numpy as np

from converter.core.errors import InvalidInputError

TYPE_KEYS = ("polygraphy_class", "polygraphy_serialized_json_type")
MAX_BYTES = 4 << 30  # a JSON of base64 arrays is ~1.4x their bytes; a bound against absurd files


def _decode(value: object, where: str) -> np.ndarray:
    if not isinstance(value, dict) or not any(value.get(k) == "ndarray" for k in TYPE_KEYS) or "array" not in value:
        raise InvalidInputError(
            f"{where}: not an encoded ndarray (expected {{'array': ..., 'polygraphy_class': 'ndarray'}})"
        )
    try:
        raw = base64.b64decode(str(value["array"]).encode(), validate=True)
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except (binascii.Error, ValueError, OSError, EOFError) as exc:
        raise InvalidInputError(f"{where}: the array does not decode ({type(exc).__name__})") from exc
    if not isinstance(array, np.ndarray):  # an .npz archive inside, not one array
        raise InvalidInputError(f"{where}: holds {type(array).__name__}, not one array")
    return array


def read_inputs(path: Path) -> list[dict[str, np.ndarray]]:
    """A Polygraphy inputs JSON -> one feed dict per iteration."""
    if path.stat().st_size > MAX_BYTES:
        raise InvalidInputError(f"{path}: {path.stat().st_size:,} bytes is more than an inputs file should hold")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({type(exc).__name__})") from exc
    if isinstance(data, dict):
        data = [data]  # one iteration written as a bare mapping
    if not isinstance(data, list) or not data or not all(isinstance(item, dict) for item in data):
        raise InvalidInputError(f"{path}: expected Polygraphy's list of {{input name: array}} mappings")
    return [
        {str(name): _decode(value, f"{path}: iteration {index}, input '{name}'") for name, value in item.items()}
        for index, item in enumerate(data)
    ]


def _encode(array: np.ndarray) -> dict[str, str]:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return {"array": base64.b64encode(buffer.getvalue()).decode("ascii"), "polygraphy_class": "ndarray"}


def dumps_inputs(feeds: list[dict[str, np.ndarray]]) -> str:
    """Feed dicts -> the JSON text `polygraphy run --load-inputs` reads."""
    return json.dumps([{name: _encode(value) for name, value in feed.items()} for feed in feeds])
