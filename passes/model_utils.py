"""ModelProto helpers shared by the pass manager and passes that run inference."""

from __future__ import annotations

import onnx

SMALL_TENSOR_BYTES = 4096


def without_large_weights(model: onnx.ModelProto, as_inputs: bool = False) -> onnx.ModelProto:
    """A copy of `model` whose large initializers keep only name, dtype and dims.

    Shape inference needs the values of small int tensors (reshape targets, axes)
    but not of weights; leaving weights out keeps inference cheap at any model size
    and lets it run on models over protobuf's 2 GB limit. With `as_inputs` the large
    weights become typed graph inputs instead of empty initializers.
    """
    light = onnx.ModelProto()
    light.ir_version, light.producer_name = model.ir_version, model.producer_name
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = light.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    for init in model.graph.initializer:
        if init.HasField("raw_data") and len(init.raw_data) > SMALL_TENSOR_BYTES or init.data_location == 1:
            if as_inputs:  # for tools that read every initializer's values (symbolic inference)
                graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
            else:
                graph.initializer.add(name=init.name, data_type=init.data_type, dims=init.dims)
        else:
            graph.initializer.append(init)
    return light
