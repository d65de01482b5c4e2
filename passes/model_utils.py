"""ModelProto helpers shared by the pass manager and passes that run inference."""

from __future__ import annotations

import contextlib
import io
import tempfile

import onnx
import onnx_graphsurgeon as gs

SMALL_TENSOR_BYTES = 4096


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


def symbolic_dims(graph: gs.Graph, auto_merge: bool) -> dict[str, list[int | str]]:
    """Tensor name -> dims (ints, or symbol names) from onnxruntime's symbolic shape inference.

    `auto_merge` lets inference assume that dims meeting at a broadcast are equal
    (right for shape folding of valid graphs; wrong for proofs that must hold when a
    dim is 1, e.g. a causal mask). Falls back to onnx's own inference. Unknown dims
    are named '?<tensor>:<axis>', equal to nothing else. Inference runs in a scratch
    directory: when incomplete, onnxruntime writes a debug model into the cwd.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = without_large_weights(gs.export_onnx(graph.copy(), do_type_check=False), as_inputs=True)
    del model.graph.value_info[:]
    inferred = None
    with (
        tempfile.TemporaryDirectory(prefix="trtforge-symshape-") as scratch,
        contextlib.chdir(scratch),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        try:
            inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=auto_merge, guess_output_rank=False)
        except Exception:  # best effort: onnx's own inference below never merges dims
            inferred = None
        if inferred is None:
            try:
                inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
            except Exception:  # no dims at all: nothing gets proved
                return {}
    dims: dict[str, list[int | str]] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if info.type.tensor_type.HasField("shape"):
            dims[info.name] = [
                int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or f"?{info.name}:{i}")
                for i, d in enumerate(info.type.tensor_type.shape.dim)
            ]
    return dims
