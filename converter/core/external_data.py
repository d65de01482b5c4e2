"""Weights stored beside the model file, read where they lie instead of loaded.

A multi-GB LLM keeps its weights in an external-data file. Loading them into the
ModelProto costs their size in memory before any pass runs, and every copy of the model
(an export, a save) costs it again. A model loaded lazily (`load_model(path,
lazy=True)`) keeps each external initializer as the stub the file holds, its
`location` resolved to the absolute path of the data file (after
converter/core/model_checks.py checked that it lies inside the model's folder, and
that the byte range fits). Then:

- `array_of` gives a read-only numpy view into one shared read-only memory map per
  data file: nothing is copied, and only the pages a pass reads become resident;
  `release_pages` hands them back to the page cache (the passes' manager calls it
  after every pass, when no view is in use any more);
- `copy_to` streams a tensor's bytes into another file (kernel `copy_file_range`, or
  1 MiB reads): saving never holds a weight in memory;
- `ort_form` gives onnxruntime a copy whose stubs name their files relative to the data
  folder, which onnxruntime is told to read from: it reads the weights by path, as for a
  model file, and holds no second copy of them on our side.

Absolute locations never leave the process: onnx and onnxruntime both refuse them
(they would also point a copied file at the source's folder). `save_model` writes the
bytes into the output's own data file and `cpu_session` names the folder. Data is little-endian on disk, as ONNX says; views
are taken as such (every machine trtforge targets is little-endian).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import numpy_helper

from converter.core.model_checks import tensor_nbytes

_MAPS: dict[str, tuple[tuple[int, ...], mmap.mmap]] = {}  # absolute path -> (file identity, read-only map)
# numpy dtypes whose raw little-endian bytes are the array as ONNX stores it (others: onnx's reader)
_DIRECT = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.UINT16: np.uint16,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.UINT32: np.uint32,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.UINT64: np.uint64,
    onnx.TensorProto.BOOL: np.bool_,
}
COPY_CHUNK = 1 << 20
LOAD_BELOW = 64 << 10  # smaller external tensors are read in at load (resolve_locations)


def _fields(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def is_mapped(tensor: onnx.TensorProto) -> bool:
    """True for an external stub of a lazily loaded model (its location is an absolute path)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return False
    return os.path.isabs(_fields(tensor).get("location", ""))


def resolve_locations(model: onnx.ModelProto, folder: Path, load_below: int = LOAD_BELOW) -> None:
    """Point every external stub of `model` at the absolute path of its data file.

    Tensors under `load_below` bytes are read in instead, as onnx's loader would: shape
    arithmetic (reshape targets, position tables) reads their values, and passes and shape
    inference treat small constants as values, not weights. Only for a model whose external
    data `check_external_data` accepted: the locations lie inside `folder` and the byte
    ranges inside the files."""
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = str((folder / entry.value).resolve())
        if byte_range(tensor)[2] < load_below:
            data = read_bytes(tensor)
            tensor.ClearField("external_data")
            tensor.raw_data = data
            tensor.data_location = onnx.TensorProto.DEFAULT  # what onnx's loader leaves


def byte_range(tensor: onnx.TensorProto) -> tuple[str, int, int]:
    """(absolute path, offset, length) of a mapped tensor's bytes."""
    fields = _fields(tensor)
    offset = int(fields.get("offset", "0"))
    length = int(fields["length"]) if "length" in fields else tensor_nbytes(tensor)
    if length is None:  # no length and no fixed size (strings): the rest of the file
        length = os.path.getsize(fields["location"]) - offset
    return fields["location"], offset, length


def _identity(path: str) -> tuple[int, ...]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _map(path: str) -> mmap.mmap:
    """The shared read-only map of `path`, made anew when the file there is another one (a
    later save replaced it) than the one mapped; maps of files since deleted are closed
    where no view holds them (a long-lived process keeps no deleted scratch file alive)."""
    identity = _identity(path)
    if path in _MAPS and _MAPS[path][0] != identity:
        _close(path)
    for other in [p for p in _MAPS if p != path and not os.path.exists(p)]:
        _close(other)
    if path not in _MAPS:
        with open(path, "rb") as handle:  # the map keeps its own reference to the file
            _MAPS[path] = (identity, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))
    return _MAPS[path][1]


def _close(path: str) -> None:
    """Forget `path`'s map; close it unless views still point into it (then it closes with them)."""
    _, mapped = _MAPS.pop(path)
    with contextlib.suppress(BufferError):
        mapped.close()


def array_of(tensor: onnx.TensorProto) -> np.ndarray:
    """The mapped tensor's values: a read-only view into the data file's map where the dtype
    allows, else (4-bit, bfloat16, float8, strings) read by onnx from a copy of the bytes."""
    path, offset, length = byte_range(tensor)
    dims = tuple(tensor.dims)
    if tensor.data_type in _DIRECT:
        dtype = np.dtype(_DIRECT[tensor.data_type]).newbyteorder("<")
        if length == 0:
            return np.zeros(dims, dtype)
        return np.frombuffer(_map(path), dtype=dtype, count=length // dtype.itemsize, offset=offset).reshape(dims)
    inline = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    inline.raw_data = read_bytes(tensor)
    return numpy_helper.to_array(inline)


def read_bytes(tensor: onnx.TensorProto) -> bytes:
    """The mapped tensor's stored bytes (one tensor's worth of memory)."""
    path, offset, length = byte_range(tensor)
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(length)
    if len(data) != length:
        raise OSError(f"{path}: ends inside the bytes of initializer '{tensor.name}'")
    return data


def copy_to(tensor: onnx.TensorProto, out: BinaryIO) -> int:
    """Append the mapped tensor's bytes to `out` without holding them in memory; the count."""
    path, offset, length = byte_range(tensor)
    out.flush()
    with open(path, "rb") as source:
        done = 0
        try:  # in the kernel, page cache to page cache
            while done < length:
                sent = os.copy_file_range(source.fileno(), out.fileno(), length - done, offset + done)
                if sent == 0:
                    break
                done += sent
        except (AttributeError, OSError):  # no copy_file_range here, or not between these files
            pass
        if done:
            out.seek(0, os.SEEK_END)
        source.seek(offset + done)
        while done < length:
            block = source.read(min(COPY_CHUNK, length - done))
            if not block:
                raise OSError(f"{path}: ends inside the bytes of initializer '{tensor.name}'")
            out.write(block)
            done += len(block)
    return done


def release_pages(tensor: onnx.TensorProto | None = None) -> None:
    """Tell the kernel the pages read through the maps (or through `tensor`'s range only) are
    not needed now: they leave this process's resident set (they stay in the page cache, and
    the next read maps them again). Views stay valid."""
    if tensor is not None:
        path, offset, length = byte_range(tensor)
        if path not in _MAPS or length == 0:
            return
        start = offset - offset % mmap.PAGESIZE
        regions = [(_MAPS[path][1], start, offset + length - start)]
    else:
        regions = [(mapped, 0, len(mapped)) for _, mapped in _MAPS.values()]
    for mapped, start, length in regions:
        with contextlib.suppress(AttributeError, OSError, ValueError):  # no madvise on this platform
            mapped.madvise(mmap.MADV_DONTNEED, start, min(length, len(mapped) - start))


@dataclass
class OrtWeights:
    """Where onnxruntime finds a lazily loaded model's mapped weights: `folder`, from which it
    reads the data files by path as it would for a model file (session option
    `session.model_external_initializers_file_folder_path`), and arrays bound by name for
    stubs outside that folder (`SessionOptions.add_external_initializers`; onnxruntime copies
    those, so they are the exception)."""

    folder: str | None = None
    names: list[str] = field(default_factory=list)
    arrays: list[np.ndarray] = field(default_factory=list)


def ort_form(model: onnx.ModelProto) -> tuple[onnx.ModelProto, OrtWeights]:
    """A copy of a lazily loaded model for onnxruntime, and where its weights are: stubs in the
    folder holding most mapped bytes name their files relative to it (onnxruntime refuses
    absolute locations); other stubs name a placeholder, replaced by the bound arrays before
    onnxruntime reads any; a type numpy cannot hand over (bfloat16, 4-bit) is inlined."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # cheap: a lazily loaded model holds no large weights
    mapped = [(t, byte_range(t)) for t in copy.graph.initializer if is_mapped(t)]
    by_folder: dict[str, int] = {}
    for _, (path, _, length) in mapped:
        by_folder[os.path.dirname(path)] = by_folder.get(os.path.dirname(path), 0) + length
    weights = OrtWeights(folder=max(by_folder, key=by_folder.get) if by_folder else None)
    for tensor, (path, _, _) in mapped:
        location = None
        if os.path.dirname(path) == weights.folder:
            location = os.path.basename(path)
        elif tensor.data_type in _DIRECT:
            weights.names.append(tensor.name)
            weights.arrays.append(np.ascontiguousarray(array_of(tensor)))
            location = "bound-by-name.bin"
        else:
            data = read_bytes(tensor)
            tensor.ClearField("external_data")
            tensor.ClearField("data_location")
            tensor.raw_data = data
        for entry in tensor.external_data:
            if entry.key == "location" and location is not None:
                entry.value = location
    return copy, weights


def to_array(tensor: onnx.TensorProto) -> np.ndarray:
    """An initializer's values, whether held inline or mapped (numpy_helper.to_array refuses
    the absolute locations of mapped stubs)."""
    return array_of(tensor) if is_mapped(tensor) else numpy_helper.to_array(tensor)
