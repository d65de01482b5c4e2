"""Write an ONNX model tensor by tensor: never a second copy of the weights in memory.

`model.SerializeToString()` builds the whole file in memory next to the model (2 GB of
weights, 2 GB more), and onnx's external-data save starts from a full `CopyFrom` of the
model. A protobuf message is the concatenation of its fields, in any order, and a
repeated field may be written one element at a time, so the file is written as:
the model's fields without its graph; then the graph field's header (its length,
computed from the parts' sizes); the graph's fields without its initializers; then
each initializer, serialized alone. With `data_file`, initializers of at least
`inline_below` bytes go into that file instead (one after the other, each at an offset
aligned to 64 bytes), and the model holds a small TensorProto pointing at them.

Initializers of a lazily loaded model (converter/core/external_data.py) are streamed
from their data file: into `data_file` with the kernel's file-to-file copy, or, when
written inline, as the same bytes a loaded model would serialize to. So a model saves
to the same bytes whether its weights were loaded or mapped.

The bytes are deterministic (same model, same bytes); onnx reads them back unchanged.
"""

from __future__ import annotations

from typing import BinaryIO

import onnx
from onnx import numpy_helper

from converter.core import external_data

MODEL_GRAPH, GRAPH_INITIALIZER, TENSOR_RAW_DATA = 7, 5, 9
ALIGNMENT = 64  # external data offsets: what memory-mapping readers and SIMD loads like


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field_header(number: int, size: int) -> bytes:
    return _varint(number << 3 | 2) + _varint(size)


def _raw_bytes(tensor: onnx.TensorProto) -> bytes:
    """The tensor's data as raw little-endian bytes (raw_data, or converted from typed fields)."""
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return numpy_helper.to_array(tensor).tobytes()


def _external_stub(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> onnx.TensorProto:
    """The tensor's metadata (no data) pointing at `length` bytes at `offset` of `location`."""
    stub = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    if tensor.doc_string:
        stub.doc_string = tensor.doc_string
    stub.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        stub.external_data.add(key=key, value=value)
    return stub


def _nbytes(tensor: onnx.TensorProto) -> int:
    if external_data.is_mapped(tensor):
        return external_data.byte_range(tensor)[2]
    return len(tensor.raw_data) if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).nbytes


def _plan(graph: onnx.GraphProto, external: bool, location: str, inline_below: int) -> list[tuple]:
    """Per initializer: (tensor, None) to write inline, or (tensor, stub, offset) to write to the data file."""
    plan: list[tuple] = []
    offset = 0
    for tensor in graph.initializer:
        movable = external and (tensor.data_location != onnx.TensorProto.EXTERNAL or external_data.is_mapped(tensor))
        size = _nbytes(tensor) if movable else 0
        if movable and size >= inline_below:
            offset += -offset % ALIGNMENT
            plan.append((tensor, _external_stub(tensor, location, offset, size), offset))
            offset += size
        else:
            plan.append((tensor, None, None))
    return plan


def write_model(
    model: onnx.ModelProto,
    out: BinaryIO,
    data: BinaryIO | None = None,
    location: str = "",
    inline_below: int = 1024,
) -> None:
    """Write `model` to `out` (and its large initializers to `data`, named `location` in the model).

    `model` is not modified. Memory beyond the model itself: the graph without its
    weights, and one initializer at a time (sizes come from ByteSize(), so nothing is
    serialized twice).
    """
    graph_head = _graph_without_initializers(model.graph)
    plan = _plan(model.graph, data is not None, location, inline_below)
    sizes = [_serialized_size(stub if stub is not None else tensor) for tensor, stub, *_ in plan]
    graph_size = len(graph_head) + sum(len(_field_header(GRAPH_INITIALIZER, n)) + n for n in sizes)
    out.write(_without(model, "graph").SerializeToString(deterministic=True))
    out.write(_field_header(MODEL_GRAPH, graph_size))
    out.write(graph_head)
    written = 0
    for (tensor, stub, *where), size in zip(plan, sizes, strict=True):
        if stub is not None:
            data.write(b"\0" * (where[0] - written))
            if external_data.is_mapped(tensor):
                count = external_data.copy_to(tensor, data)
            else:
                count = data.write(_raw_bytes(tensor))
            written = where[0] + count
        out.write(_field_header(GRAPH_INITIALIZER, size))
        if stub is None and external_data.is_mapped(tensor):
            _write_inline(tensor, out)
        else:
            out.write((stub if stub is not None else tensor).SerializeToString(deterministic=True))


def _inline_parts(tensor: onnx.TensorProto) -> tuple[bytes, int, bytes]:
    """A mapped stub's inline form as (fields before raw_data, data length, fields after):
    protobuf writes fields in number order, so these are a loaded tensor's bytes."""
    head = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    tail = onnx.TensorProto(data_location=onnx.TensorProto.DEFAULT)  # as onnx's loader leaves it
    if tensor.doc_string:
        tail.doc_string = tensor.doc_string
    tail.metadata_props.extend(tensor.metadata_props)
    length = external_data.byte_range(tensor)[2]
    return head.SerializeToString(deterministic=True), length, tail.SerializeToString(deterministic=True)


def _serialized_size(tensor: onnx.TensorProto) -> int:
    if not external_data.is_mapped(tensor):
        return tensor.ByteSize()
    head, length, tail = _inline_parts(tensor)
    return len(head) + len(_field_header(TENSOR_RAW_DATA, length)) + length + len(tail)


def _write_inline(tensor: onnx.TensorProto, out: BinaryIO) -> None:
    head, length, tail = _inline_parts(tensor)
    out.write(head + _field_header(TENSOR_RAW_DATA, length))
    external_data.copy_to(tensor, out)
    out.write(tail)


def _without(message, field: str):
    """A copy of `message` without `field` (the graph of a model, the initializers of a graph):
    the large part is left out of the copy instead of copied and cleared."""
    copy = type(message)()
    for descriptor, value in message.ListFields():
        if descriptor.name == field:
            continue
        target = getattr(copy, descriptor.name)
        if isinstance(value, (str, bytes, int, float, bool)):
            setattr(copy, descriptor.name, value)
        elif hasattr(target, "extend"):  # a repeated field
            target.extend(value)
        else:
            target.CopyFrom(value)
    return copy


def _graph_without_initializers(graph: onnx.GraphProto) -> bytes:
    """The graph's serialized fields, initializers left out (they follow one by one)."""
    return _without(graph, "initializer").SerializeToString(deterministic=True)
