"""Helpers shared by the ops' onnx.py modules: building function bodies, attaching functions.

A trtforge op reaches ONNX as a node in domain `trtforge` plus a local FunctionProto
(same domain and name) whose body is standard ONNX ops. `attach_functions(model)`
adds the function of every trtforge op the graph uses and the domain's opset import,
so onnxruntime runs the graph and TensorRT-RTX's parser inlines the bodies.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter.core.model_io import opset_of
from plugins_cuda import DOMAIN, DOMAIN_VERSION

MIN_OPSET = 15  # CastLike


class Body:
    """Accumulates the nodes of a function body with generated names."""

    def __init__(self, prefix: str):
        self.nodes: list[onnx.NodeProto] = []
        self.prefix = prefix
        self.count = 0

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs) -> str | list[str]:
        names = [f"{self.prefix}_{op_type.lower()}{self.count}_{i}" for i in range(outputs)]
        self.count += 1
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def const(self, value, dtype=np.float32) -> str:
        tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype))
        return self.op("Constant", value=tensor)

    def attr_int(self, attr: str) -> str:
        """An int64 scalar holding the calling node's attribute `attr`."""
        ref = helper.make_attribute_ref("value_int", onnx.AttributeProto.INT)
        ref.ref_attr_name = attr
        name = f"{self.prefix}_attr_{attr}"
        node = helper.make_node("Constant", [], [name])
        node.attribute.append(ref)
        self.nodes.append(node)
        return name


def attach_functions(model: onnx.ModelProto, builders: dict[str, Callable[[int], onnx.FunctionProto]]) -> None:
    """Add the FunctionProto of each trtforge op used in the main graph, and the domain import."""
    used = {n.op_type for n in model.graph.node if n.domain == DOMAIN}
    if not used:
        return
    opset = opset_of(model)
    have = {(f.domain, f.name) for f in model.functions}
    for name in sorted(used):
        if (DOMAIN, name) not in have and name in builders:
            model.functions.append(builders[name](opset))
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    model.ir_version = max(model.ir_version, 10)
