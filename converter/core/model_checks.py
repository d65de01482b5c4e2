"""Checks an ONNX file from an untrusted source passes before any byte of it reaches
onnxruntime or a TensorRT parser (both read external data by path, on their own).

`load_model` runs them all, so every command gets them: external-data locations that
are relative, resolve (symlinks followed) to regular files inside the model's folder,
and whose offset + length lie within the file and match the tensor's size; tensor dims
that are non-negative with a bounded byte size (inline data of the size the dims
say); ir_version and opsets this onnx knows; a graph where every tensor has one
producer and every node reads only what exists before it (no cycles, no dangling
inputs). Each failure is one ModelLoadError line naming the file and the thing at fault.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from converter.core.errors import ModelLoadError
from converter.core.limits import LIMITS

MIN_OPSET = 7  # the oldest default-domain opset onnxruntime and TensorRT still run

PACKED_BITS = {  # sub-byte types, stored packed
    onnx.TensorProto.INT4: 4,
    onnx.TensorProto.UINT4: 4,
    onnx.TensorProto.FLOAT4E2M1: 4,
    onnx.TensorProto.INT2: 2,
    onnx.TensorProto.UINT2: 2,
}


TENSOR_BYTES = LIMITS["tensor-bytes"]  # 64 GiB by default: far above any one weight of today's LLMs


def tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the tensor's dims and type call for (None for strings and unknown types)."""
    count = 1
    for dim in tensor.dims:
        count *= dim
    if tensor.data_type in PACKED_BITS:
        return -(-count * PACKED_BITS[tensor.data_type] // 8)
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None


def check_versions(model: onnx.ModelProto, where: str) -> None:
    """ir_version and default-domain opset within what the installed onnx defines."""
    if not 3 <= model.ir_version <= onnx.IR_VERSION:
        raise ModelLoadError(
            f"{where}: ir_version {model.ir_version} is not one onnx {onnx.__version__} knows (3..{onnx.IR_VERSION})"
        )
    newest = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and not MIN_OPSET <= entry.version <= newest:
            raise ModelLoadError(
                f"{where}: opset {entry.version} is outside {MIN_OPSET}..{newest} (what onnx {onnx.__version__} and the runtimes support)"
            )


def check_tensor_sizes(model: onnx.ModelProto, where: str) -> None:
    """Dims non-negative, sizes bounded, and inline data exactly as large as the dims say."""
    limit = TENSOR_BYTES.value()
    for tensor in model.graph.initializer:
        if any(d < 0 for d in tensor.dims):
            raise ModelLoadError(f"{where}: initializer '{tensor.name}' has a negative dim {list(tensor.dims)}")
        size = tensor_nbytes(tensor)
        if size is not None and size > limit:
            raise ModelLoadError(
                f"{where}: initializer '{tensor.name}' declares {size:,} bytes (dims {list(tensor.dims)}), over the "
                f"limit of {limit:,} ({TENSOR_BYTES.how_to_raise()})"
            )
        inline = tensor.data_location != onnx.TensorProto.EXTERNAL and tensor.HasField("raw_data")
        if inline and size is not None and len(tensor.raw_data) != size:
            raise ModelLoadError(
                f"{where}: initializer '{tensor.name}' holds {len(tensor.raw_data)} bytes, its dims "
                f"{list(tensor.dims)} need {size}"
            )
    for info in (*model.graph.input, *model.graph.output):
        dims = [d.dim_value for d in info.type.tensor_type.shape.dim if d.HasField("dim_value")]
        if any(d < 0 for d in dims):
            raise ModelLoadError(f"{where}: '{info.name}' has a negative dim")
        count = 1
        for dim in dims:
            count *= dim
        if count * 8 > limit:
            raise ModelLoadError(
                f"{where}: '{info.name}' has dims {dims} ({count:,} elements), over the limit of {limit:,} bytes "
                f"({TENSOR_BYTES.how_to_raise()})"
            )


def _external_fields(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def check_external_data(model: onnx.ModelProto, folder: Path, where: str) -> None:
    """Every external-data entry names a regular file inside `folder` and a byte range within it."""
    root = folder.resolve()
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        fields = _external_fields(tensor)
        location = fields.get("location", "")
        what = f"{where}: initializer '{tensor.name}' external data '{location}'"
        if not location or Path(location).is_absolute() or location.startswith(("/", "\\")):
            raise ModelLoadError(f"{what}: the location must be a file name relative to the model's folder")
        target = (folder / location).resolve()
        if target != root and root not in target.parents:
            raise ModelLoadError(f"{what}: resolves to {target}, outside the model's folder {root}")
        if not target.exists():
            raise ModelLoadError(f"{what}: no such file in {folder}")
        if not target.is_file():
            raise ModelLoadError(f"{what}: not a regular file")
        try:
            offset = int(fields.get("offset", "0"))
            length = int(fields["length"]) if "length" in fields else None
        except ValueError as exc:
            raise ModelLoadError(f"{what}: offset/length are not integers") from exc
        available = target.stat().st_size - offset
        size = tensor_nbytes(tensor)
        if offset < 0 or available < 0 or (length is not None and (length < 0 or length > available)):
            raise ModelLoadError(
                f"{what}: bytes {offset}..{offset + (length or 0)} lie outside the file ({target.stat().st_size} bytes)"
            )
        stored = length if length is not None else available
        if size is not None and stored != size:
            raise ModelLoadError(f"{what}: holds {stored} bytes, the dims {list(tensor.dims)} need {size}")


def check_graph_structure(model: onnx.ModelProto, where: str) -> None:
    """One producer per tensor; every node input exists (graph input, initializer, or an earlier or
    any acyclic producer). A cycle or a dangling input is named; node order alone is not an error."""
    graph = model.graph
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    producer: dict[str, str] = {}
    for index, node in enumerate(graph.node):
        for name in node.output:
            if not name:
                continue
            if name in producer or name in available - {""}:
                raise ModelLoadError(f"{where}: tensor '{name}' is produced twice (node '{node.name or index}')")
            producer[name] = node.name or f"#{index}"
    for index, node in enumerate(graph.node):
        for name in node.input:
            if name not in available and name not in producer:
                raise ModelLoadError(f"{where}: node '{node.name or index}' reads '{name}', which nothing produces")
    for output in graph.output:
        if output.name not in available and output.name not in producer:
            raise ModelLoadError(f"{where}: graph output '{output.name}' is produced by no node")
    _check_acyclic(graph, available, where)


def _check_acyclic(graph: onnx.GraphProto, available: set[str], where: str) -> None:
    """In written order when sorted (the usual case, one pass); else Kahn's algorithm, and a
    node left over sits on a cycle."""
    ready = set(available)
    for node in graph.node:
        if not all(name in ready for name in node.input):
            break
        ready.update(node.output)
    else:
        return
    waiting = {index: {n for n in node.input if n not in available} for index, node in enumerate(graph.node)}
    readers: dict[str, list[int]] = {}
    for index, names in waiting.items():
        for name in names:
            readers.setdefault(name, []).append(index)
    queue = [index for index, names in waiting.items() if not names]
    done = 0
    while queue:
        index = queue.pop()
        done += 1
        for name in graph.node[index].output:
            for reader in readers.get(name, []):
                waiting[reader].discard(name)
                if not waiting[reader]:
                    queue.append(reader)
    if done < len(graph.node):
        node = graph.node[next(index for index, names in waiting.items() if names)]
        raise ModelLoadError(f"{where}: the graph has a cycle through node '{node.name or node.op_type}'")


def check_untrusted(model: onnx.ModelProto, path: Path) -> None:
    """Every check above, for the file at `path` (loaded without its external data)."""
    where = str(path)
    check_versions(model, where)
    check_tensor_sizes(model, where)
    check_external_data(model, path.parent, where)
    check_graph_structure(model, where)
