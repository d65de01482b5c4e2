"""ModelProto helpers shared by the pass manager and the passes: export, type inference, weight-free views."""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, constant_to_onnx_tensor, dtype_to_onnx
from onnx_graphsurgeon.importers.onnx_importer import (
    get_onnx_tensor_dtype,
    get_onnx_tensor_shape,
    get_onnx_tensor_type,
)
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from converter.core import external_data

SMALL_TENSOR_BYTES = 4096


class MappedValues(LazyValues):
    """The lazy values of a weight a lazily loaded model maps (converter/core/external_data.py).

    Loading gives a read-only view into the data file's map instead of a copy, and gs keeps
    it as the constant's values; `restore_mapped` turns such views back into MappedValues
    after a pass, so an export writes the stub (streamed at save), not the bytes.
    """

    def load(self) -> np.ndarray:
        view = external_data.array_of(self.tensor)
        _VIEWS[id(view)] = (view, self)
        return view


_VIEWS: dict[int, tuple[np.ndarray, MappedValues]] = {}  # views handed out and not yet restored


def restore_mapped(graph: gs.Graph) -> int:
    """Give every constant of `graph` whose values are still a view MappedValues loaded its
    MappedValues back, and release the pages read; the count restored. A view is read-only,
    so a constant that holds one holds the file's bytes unchanged. Views that nothing else
    holds any more are forgotten (those of other graphs stay restorable)."""
    restored = 0
    for tensor in graph.tensors().values():
        entry = _VIEWS.get(id(getattr(tensor, "_values", None)))
        if isinstance(tensor, gs.Constant) and entry is not None and entry[0] is tensor._values:
            tensor._values = entry[1]
            restored += 1
    for key in [k for k, (view, _) in _VIEWS.items() if sys.getrefcount(view) <= 3]:
        del _VIEWS[key]  # held only by this registry (and the loop's names)
    external_data.release_pages()
    return restored


def release_values(const: gs.Constant) -> None:
    """Done reading this weight: if it is mapped, its view goes and its pages leave the resident
    set now (a pass that streams through every weight stays at one weight's memory)."""
    entry = _VIEWS.pop(id(const._values), None)
    if entry is not None and entry[0] is const._values:
        const._values = entry[1]
    if isinstance(const._values, MappedValues):
        external_data.release_pages(const._values.tensor)


def bind_mapped(graph: gs.Graph) -> gs.Graph:
    """Make the constants gs imported from a lazily loaded model's mapped stubs read in place
    (MappedValues) and export as the stubs they are; `graph` itself, for chaining."""
    for tensor in graph.tensors().values():
        values = getattr(tensor, "_values", None)
        plain = isinstance(values, LazyValues) and not isinstance(values, (MappedValues, SparseValues))
        if plain and external_data.is_mapped(values.tensor):
            tensor._values = MappedValues(values.tensor)
            tensor.data_location = None
    return graph


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """gs.import_onnx, with a lazily loaded model's weights read in place (`bind_mapped`)."""
    return bind_mapped(gs.import_onnx(model))


def is_large(init: onnx.TensorProto) -> bool:
    """Weights worth leaving out of copies: big tensors, or data stored externally.

    Sized from dims and dtype: reading `raw_data` would copy the whole buffer.
    """
    if init.data_location == onnx.TensorProto.EXTERNAL:
        return True
    count = 1
    for dim in init.dims:
        count *= dim
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 1
    return count * itemsize > SMALL_TENSOR_BYTES


def without_large_weights(model: onnx.ModelProto, as_inputs: bool = False) -> onnx.ModelProto:
    """A copy of `model` whose large initializers keep only name, dtype and dims.

    Shape inference needs the values of small int tensors (reshape targets, axes)
    but not of weights; leaving weights out keeps inference cheap at any model size
    and lets it run on models over protobuf's 2 GB limit. With `as_inputs` the large
    weights become typed graph inputs instead of empty initializers.
    """
    light = onnx.ModelProto()
    light.ir_version, light.producer_name = model.ir_version, model.producer_name
    light.producer_version, light.doc_string = model.producer_version, model.doc_string
    light.metadata_props.extend(model.metadata_props)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = light.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    for init in model.graph.initializer:
        if is_large(init):
            if as_inputs:  # for tools that read every initializer's values (symbolic inference)
                graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
            else:
                graph.initializer.add(name=init.name, data_type=init.data_type, dims=init.dims)
        else:
            graph.initializer.append(init)
    return light


def _constant_nbytes(const: gs.Constant) -> int:
    """Size of a constant's values, without loading lazy ones."""
    values = const._values  # LazyValues/SparseValues know their size; reading `.values` would load them
    if isinstance(values, LazyValues):
        return values.nbytes
    return int(values.nbytes)


def _fill_initializer(proto: onnx.TensorProto, const: gs.Constant) -> None:
    """Write `const` into `proto`, an entry just added to the model.

    Filling the entry in place saves the copy that appending a finished TensorProto
    makes; a lazy constant's source proto (maybe the caller's) is copied, not changed.
    """
    values = const._values
    if isinstance(values, LazyValues):
        proto.CopyFrom(values.tensor)
    elif values.dtype.kind in "OSU" or dtype_to_onnx(const.export_dtype) != dtype_to_onnx(values.dtype):
        proto.CopyFrom(constant_to_onnx_tensor(const))  # strings, or a dtype conversion on export
    else:
        proto.data_type = dtype_to_onnx(values.dtype)
        proto.dims.extend(values.shape)
        proto.raw_data = np.ascontiguousarray(values).tobytes()
    if not isinstance(values, LazyValues) and const.data_location is not None:
        proto.data_location = const.data_location
    proto.name = const.name


def _placeholder(const: gs.Constant) -> onnx.TensorProto:
    """Name, dtype and dims of a large constant, no values (see `without_large_weights`)."""
    if isinstance(const._values, LazyValues):
        source = const._values.tensor
        return onnx.TensorProto(name=const.name, data_type=source.data_type, dims=source.dims)
    return onnx.TensorProto(name=const.name, data_type=dtype_to_onnx(const.export_dtype), dims=const.shape)


def export_graph(
    graph: gs.Graph,
    like: onnx.ModelProto | None = None,
    weights: bool = True,
    large_as_inputs: bool = False,
) -> onnx.ModelProto:
    """`graph` as a ModelProto with `like`'s opsets, IR version and metadata (else the graph's).

    gs.export_onnx builds a GraphProto and then copies it into the model, so every
    weight is copied twice per export; here each initializer is written once, straight
    into the model. With `weights=False` the large constants keep only name, dtype and
    dims (the form `without_large_weights` gives: enough for shape inference and for
    structural model passes, at any model size); with `large_as_inputs` they become
    typed graph inputs instead. The TensorProtos that lazy constants read from (often
    the caller's model) are never modified.
    """
    restore_mapped(graph)  # weights a pass only read are written as their stubs, not as bytes
    model = onnx.ModelProto()
    if like is not None:
        model.ir_version, model.producer_name = like.ir_version, like.producer_name
        model.producer_version = like.producer_version
        model.metadata_props.extend(like.metadata_props)
        model.opset_import.extend(like.opset_import)
    else:
        model.ir_version = graph.ir_version or onnx.IR_VERSION
        model.producer_name, model.producer_version = graph.producer_name or "", graph.producer_version or ""
        domains = {o.domain: o.version for o in graph.import_domains or []} or {"": graph.opset}
        for node in graph.nodes:
            domains.setdefault(node.domain or "", 1)
        model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in domains.items())
    model.functions.extend(OnnxExporter.export_function(f) for f in graph.functions)
    out = model.graph
    out.name, out.doc_string = graph.name, graph.doc_string or ""
    out.node.extend(OnnxExporter.export_node(node) for node in graph.nodes)
    out.input.extend(OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.inputs)
    out.output.extend(OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.outputs)
    io_names = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for name, tensor in graph.tensors().items():
        if isinstance(tensor, gs.Constant):
            if isinstance(tensor._values, SparseValues):
                out.sparse_initializer.append(tensor._values.tensor)
            elif weights or _constant_nbytes(tensor) <= SMALL_TENSOR_BYTES:
                _fill_initializer(out.initializer.add(), tensor)
            elif large_as_inputs:
                out.input.append(
                    onnx.helper.make_tensor_value_info(name, _placeholder(tensor).data_type, list(tensor.shape))
                )
            else:
                out.initializer.append(_placeholder(tensor))
        elif name not in io_names and (tensor.dtype is not None or tensor.shape is not None):
            out.value_info.append(OnnxExporter.export_value_info_proto(tensor, do_type_check=False))
    return model


def infer_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """Refresh value_info by shape/type inference (best effort), without copying the weights."""
    try:
        inferred = onnx.shape_inference.infer_shapes(without_large_weights(model), data_prop=True)
    except Exception:  # inference is best effort: the graph is valid without it
        return model
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    return model


def graph_to_model(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export a graph, keeping the source model's opsets, IR version and metadata, with
    types inferred (for model-level passes that edit a graph of their own)."""
    return infer_types(export_graph(graph, like))


def infer_graph_types(graph: gs.Graph, like: onnx.ModelProto | None = None) -> None:
    """Refresh the dtype and shape of the graph's tensors by onnx shape inference (best effort).

    Inference runs on a weight-free export (`export_graph(weights=False)`), so its cost
    does not grow with the weights, and its results are written onto the graph's own
    tensors: the graph stays the one representation between passes, no re-import.
    Tensors inference says nothing about keep what they had.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(export_graph(graph, like, weights=False), data_prop=True)
    except Exception:  # inference is best effort: the graph is valid without it
        return
    tensors = graph.tensors()
    dtypes: dict[int, object] = {}  # elem_type -> what gs uses as dtype, converted once
    for info in inferred.graph.value_info:
        tensor = tensors.get(info.name)
        if not isinstance(tensor, gs.Variable) or info.type.ByteSize() == 0:
            continue
        if not info.type.HasField("tensor_type"):  # sequences, optionals...: gs's own reading
            tensor.dtype, tensor.shape = get_onnx_tensor_dtype(info), get_onnx_tensor_shape(info)
            tensor.type = get_onnx_tensor_type(info)
            continue
        # The same reading as gs's importer, without its per-call conversions (this loop
        # runs over every tensor after every pass that changed the graph).
        tensor_type = info.type.tensor_type
        if tensor_type.elem_type not in dtypes:
            dtypes[tensor_type.elem_type] = get_onnx_tensor_dtype(info)
        tensor.dtype, tensor.type = dtypes[tensor_type.elem_type], "tensor_type"
        tensor.shape = (
            [
                d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else None
                for d in tensor_type.shape.dim
            ]
            if tensor_type.HasField("shape")
            else None
        )


def import_with_types(model: onnx.ModelProto) -> gs.Graph:
    """`model` as a gs graph whose tensors carry inferred types (best effort).

    Inference runs on the weight-free view of the ModelProto and that view is imported,
    types and all; its large constants are then bound to `model`'s own TensorProtos,
    read lazily: nothing is copied and `model` is never modified.
    """
    light = without_large_weights(model)
    with contextlib.suppress(Exception):  # inference is best effort: the graph is valid without it
        light = onnx.shape_inference.infer_shapes(light, data_prop=True)
    graph = gs.import_onnx(light)
    large = {init.name: init for init in model.graph.initializer if is_large(init)}
    for name, tensor in graph.tensors().items():
        if isinstance(tensor, gs.Constant) and name in large:
            tensor.values = LazyValues(large[name])
            if large[name].HasField("data_location"):
                tensor.data_location = int(large[name].data_location)
    return bind_mapped(graph)  # a lazily loaded model's weights: read in place, exported as stubs


def large_constant_names(graph: gs.Graph) -> set[str]:
    """Names of the constants `export_graph(weights=False)` writes without their values."""
    return {
        name
        for name, t in graph.tensors().items()
        if isinstance(t, gs.Constant)
        and not isinstance(t._values, SparseValues)
        and _constant_nbytes(t) > SMALL_TENSOR_BYTES
    }


def restore_weights(graph: gs.Graph, source: gs.Graph, placeholders: set[str]) -> None:
    """Give `graph`'s weight placeholders the values of `source`'s constants of the same name.

    For a model pass that ran on a weight-free export: the weights it never read are
    bound back by name (no copy: the constant shares the source's values). Raises
    ValueError when a placeholder lost its name or changed its dtype or dims, since
    its values could then not be restored.
    """
    originals = source.tensors()
    for name, tensor in graph.tensors().items():
        if name not in placeholders or not isinstance(tensor, gs.Constant):
            continue
        original = originals.get(name)
        same = (
            isinstance(original, gs.Constant)
            and list(tensor.shape) == list(original.shape)
            and _placeholder(tensor).data_type == _placeholder(original).data_type
        )
        if not same:
            raise ValueError(f"weight '{name}' changed dtype or dims in a pass that ran without weights")
        tensor.values = original._values
        tensor.data_location = original.data_location
    for tensor in graph.tensors().values():
        lazy = isinstance(tensor, gs.Constant) and isinstance(tensor._values, LazyValues)
        if lazy and _is_empty(tensor._values.tensor):
            raise ValueError(f"weight '{tensor.name}' lost its values in a pass that ran without weights")


def _is_empty(proto: onnx.TensorProto) -> bool:
    """True for a placeholder: elements declared, no data stored inline or outside."""
    count = 1
    for dim in proto.dims:
        count *= dim
    if count == 0 or proto.data_location == onnx.TensorProto.EXTERNAL or proto.raw_data:
        return False
    fields = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")
    return not any(len(getattr(proto, f)) for f in fields)
