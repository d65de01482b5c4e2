"""ModelProto helpers shared by the pass manager and passes that run inference."""

from __future__ import annotations

import onnx

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
