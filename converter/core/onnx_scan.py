"""Read what an ONNX file's initializers point at without loading the file into memory.

`onnx.load(path, load_external_data=False)` still parses every inline weight: a 2 GB
model costs 2 GB (and a second copy while it is parsed) just to learn which external
files it reads. Deciding which files an output must not overwrite needs only the
initializers' `external_data` locations, so this walks the protobuf wire format over a
memory map and skips every other field by its length: no weight byte is copied.

Only the fields on the way are interpreted (ModelProto.graph = 7, GraphProto.initializer
= 5, TensorProto.external_data = 13, StringStringEntryProto key = 1 / value = 2); a file
that does not parse this far raises ValueError, and callers fall back to onnx's parser.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

MODEL_GRAPH, GRAPH_INITIALIZER, TENSOR_EXTERNAL_DATA, ENTRY_KEY, ENTRY_VALUE = 7, 5, 13, 1, 2
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _varint(buf: memoryview | mmap.mmap, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview | mmap.mmap, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field in buf[start:end]; others skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, pos = _varint(buf, pos, end)
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        elif wire == _LENGTH:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise ValueError("a field runs past the end of its message")
            yield number, pos, pos + size
            pos += size
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos != end:
        raise ValueError("a field runs past the end of its message")


def external_locations(path: str | os.PathLike) -> list[str]:
    """The `location` of every externally stored initializer of the model at `path`, sorted."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise ValueError("empty file")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            found: set[str] = set()
            for number, start, end in _fields(buf, 0, len(buf)):
                if number != MODEL_GRAPH:
                    continue
                for field, t_start, t_end in _fields(buf, start, end):
                    if field != GRAPH_INITIALIZER:
                        continue
                    for entry, e_start, e_end in _fields(buf, t_start, t_end):
                        if entry != TENSOR_EXTERNAL_DATA:
                            continue
                        parts = {k: bytes(buf[s:e]) for k, s, e in _fields(buf, e_start, e_end)}
                        if parts.get(ENTRY_KEY) == b"location" and ENTRY_VALUE in parts:
                            found.add(parts[ENTRY_VALUE].decode("utf-8", "replace"))
            return sorted(found)
