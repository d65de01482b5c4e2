"""GroupQuantMatMul as an ONNX local function (domain `trtforge`, version 1).

    y = GroupQuantMatMul(x, qweight, scales, zeros; bits, group_size)
    x [..., K] float (fp32/fp16/bf16); qweight uint8 [N, K*bits/8]; scales [N, K/G]
    (float); zeros [N, K/G] integer-valued, scales' type; y [..., N] in x's type; layout: packing.py.

The body unpacks with float arithmetic only (Cast, Div by powers of two, Floor, Sub),
which every runtime supports, including TensorRT's ONNX parser (no BitShift):

    code_j = floor(byte / 2^(bits·j)) - 2^bits · floor(byte / 2^(bits·(j+1)))

then W = (codes - zero) · scale in the scales' type, and y = x · Wᵀ. `bits` reaches the
body through an attribute reference; `group_size` is implied by the shape of
`scales` (kept as an attribute for the plugin).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from plugins_cuda import DOMAIN, DOMAIN_VERSION
from plugins_cuda.onnx_common import MIN_OPSET, Body

OP = "GroupQuantMatMul"
INPUTS = ["x", "qweight", "scales", "zeros"]
OUTPUTS = ["y"]
ATTRIBUTES = ["bits", "group_size"]


def function_proto(opset: int = 21) -> onnx.FunctionProto:
    """The FunctionProto, its body written for the model's default opset (>= 15)."""
    if opset < MIN_OPSET:
        raise ValueError(f"{OP} needs opset >= {MIN_OPSET}, got {opset}")
    b = Body("gqmm")
    bits = b.op("Cast", b.attr_int("bits"), to=TensorProto.FLOAT)
    two = b.const(2.0)
    per_byte = b.op("Div", b.const(8.0), bits)
    j = b.op("Range", b.const(0.0), per_byte, b.const(1.0))  # [P]
    shift = b.op("Pow", two, b.op("Mul", j, bits))  # 2^(bits*j)
    base = b.op("Pow", two, bits)  # 2^bits
    packed = b.op("Unsqueeze", b.op("Cast", "qweight", to=TensorProto.FLOAT), b.const([-1], np.int64))
    low = b.op("Floor", b.op("Div", packed, shift))
    high = b.op("Floor", b.op("Div", packed, b.op("Mul", shift, base)))
    codes = b.op("Sub", low, b.op("Mul", high, base))  # [N, K/P, P]
    group_shape = b.op("Concat", b.op("Shape", "scales"), b.const([-1], np.int64), axis=0)
    codes = b.op("Reshape", codes, group_shape)  # [N, K/G, G]
    zeros = b.op("Unsqueeze", b.op("Cast", "zeros", to=TensorProto.FLOAT), b.const([-1], np.int64))
    centered = b.op("CastLike", b.op("Sub", codes, zeros), "scales")  # small integers: exact in any float type
    w = b.op("Mul", centered, b.op("Unsqueeze", "scales", b.const([-1], np.int64)))
    w = b.op("Reshape", w, b.const([0, -1], np.int64))  # [N, K]
    wt = b.op("Transpose", b.op("CastLike", w, "x"), perm=[1, 0])
    b.nodes.append(helper.make_node("MatMul", ["x", wt], ["y"]))
    return helper.make_function(
        DOMAIN,
        OP,
        INPUTS,
        OUTPUTS,
        b.nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=ATTRIBUTES,
        doc_string=__doc__.split("\n\n")[1] if __doc__ else "",
    )


def make_node(inputs: list[str], output: str, bits: int, group_size: int, name: str = "") -> onnx.NodeProto:
    return helper.make_node(OP, inputs, [output], name=name or None, domain=DOMAIN, bits=bits, group_size=group_size)


def standalone_model(
    n: int, k: int, bits: int, group_size: int, dtype: int = TensorProto.FLOAT, opset: int = 21
) -> onnx.ModelProto:
    """A one-node model with every operand a graph input (x [M, K], dynamic M): for tests and benches."""
    graph = helper.make_graph(
        [make_node(INPUTS, "y", bits, group_size, name="gqmm")],
        "group_quant_matmul",
        [
            helper.make_tensor_value_info("x", dtype, ["M", k]),
            helper.make_tensor_value_info("qweight", TensorProto.UINT8, [n, k * bits // 8]),
            helper.make_tensor_value_info("scales", dtype, [n, k // group_size]),
            helper.make_tensor_value_info("zeros", dtype, [n, k // group_size]),
        ],
        [helper.make_tensor_value_info("y", dtype, ["M", n])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
        functions=[function_proto(opset)],
    )
    model.ir_version = 10
    return model
