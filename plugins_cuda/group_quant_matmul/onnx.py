"""GroupQuantMatMul as an ONNX local function (domain `trtforge`, version 1).

    y = GroupQuantMatMul(x, qweight, scales, zeros[, bias]; bits, group_size)
    x [..., K] float (fp32/fp16/bf16); qweight uint8 [N, K*bits/8]; scales [N, K/G]
    (float); zeros [N, K/G] integer-valued, scales' type; bias [N] in x's type (optional);
    y [..., N] = x · Wᵀ (+ bias) in x's type; layout: packing.py.

The body unpacks with float arithmetic only (Cast, Div by powers of two, Floor, Sub),
which every runtime supports, including TensorRT's ONNX parser (no BitShift):

    code_j = floor(byte / 2^(bits·j)) - 2^bits · floor(byte / 2^(bits·(j+1)))

then W = (codes - zero) · scale in the scales' type, and y = MatMul(x, Wᵀ) (+ bias, an Add
in x's type). `bits` reaches the body through an attribute reference; `group_size` is
implied by the shape of `scales` (kept as an attribute for the plugin).

Two arities, one op. TensorRT-RTX's parser (1.7) inlines a local function only when the
calling node passes exactly the function's declared inputs, none of them empty: a
4-input call of a 5-input function fails its static check, and a call with "" for the
bias fails as an invalid node even when the body never reads it (onnxruntime accepts
both). So the FunctionProto is written for the arity the model's nodes use:
`attach(model)` attaches the 4-input body when no GroupQuantMatMul node has a bias, the
5-input body otherwise, and gives bias-less nodes of a mixed graph an explicit zero bias
(x · Wᵀ + 0 is the same number).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converter.core.model_io import opset_of
from plugins_cuda import DOMAIN, DOMAIN_VERSION
from plugins_cuda.onnx_common import MIN_OPSET, Body

OP = "GroupQuantMatMul"
INPUTS = ["x", "qweight", "scales", "zeros", "bias"]  # bias optional
OUTPUTS = ["y"]
ATTRIBUTES = ["bits", "group_size"]


def function_proto(opset: int = 21, bias: bool = False) -> onnx.FunctionProto:
    """The FunctionProto (4 inputs, or 5 with `bias`), its body written for the model's opset (>= 15)."""
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
    if bias:
        b.nodes.append(helper.make_node("Add", [b.op("MatMul", "x", wt), "bias"], ["y"]))
    else:
        b.nodes.append(helper.make_node("MatMul", ["x", wt], ["y"]))
    return helper.make_function(
        DOMAIN,
        OP,
        INPUTS if bias else INPUTS[:4],
        OUTPUTS,
        b.nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=ATTRIBUTES,
        doc_string=__doc__.split("\n\n")[1] if __doc__ else "",
    )


def make_node(
    inputs: list[str], output: str, bits: int, group_size: int, name: str = "", bias: str = ""
) -> onnx.NodeProto:
    """A GroupQuantMatMul node; `bias` (a tensor name) becomes the 5th input when given."""
    inputs = [*inputs[:4], bias] if bias else list(inputs)
    return helper.make_node(OP, inputs, [output], name=name or None, domain=DOMAIN, bits=bits, group_size=group_size)


def node_bias(node: onnx.NodeProto) -> str:
    """The bias input's name, "" when the node has none."""
    return node.input[4] if len(node.input) > 4 else ""


def _type_and_shape(model: onnx.ModelProto, name: str) -> tuple[int, list[int]] | None:
    for t in model.graph.initializer:
        if t.name == name:
            return t.data_type, list(t.dims)
    for vi in [*model.graph.input, *model.graph.value_info]:
        if vi.name == name and vi.type.tensor_type.shape.dim:
            return vi.type.tensor_type.elem_type, [d.dim_value for d in vi.type.tensor_type.shape.dim]
    return None


def _zero_bias(model: onnx.ModelProto, node: onnx.NodeProto) -> str:
    """Name of a zero [N] initializer for `node` (one per N and type), in the scales' type.

    The scales share x's type wherever the op is produced (DequantizeLinear's output has
    the scales' type and MatMul needs both operands alike; the kernel takes one type T).
    """
    found = _type_and_shape(model, node.input[2])
    if found is None or not found[1] or found[1][0] <= 0:
        raise ValueError(f"{OP} node '{node.name}': unknown type/shape of its scales, cannot give it a zero bias")
    dtype, (n, *_) = found
    name = f"gqmm_zero_bias_{n}_{TensorProto.DataType.Name(dtype).lower()}"
    if not any(t.name == name for t in model.graph.initializer):
        zeros = np.zeros(n, helper.tensor_dtype_to_np_dtype(dtype))
        model.graph.initializer.append(numpy_helper.from_array(zeros, name))
    return name


def attach(model: onnx.ModelProto, bias_everywhere: bool = False) -> None:
    """Give every GroupQuantMatMul node one arity and (re)attach the matching function (in place).

    4 inputs when no node has a bias; otherwise, or with `bias_everywhere` (what the
    5-input TensorRT plugin needs), bias-less nodes get an explicit zero bias.
    """
    nodes = [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP]
    if not nodes:
        return
    with_bias = bias_everywhere or any(node_bias(n) for n in nodes)
    for node in nodes:
        if with_bias and not node_bias(node):
            del node.input[4:]
            node.input.append(_zero_bias(model, node))
        elif not with_bias:
            del node.input[4:]  # drop a trailing "" (TensorRT-RTX rejects empty function inputs)
    keep = [f for f in model.functions if (f.domain, f.name) != (DOMAIN, OP)]
    del model.functions[:]
    model.functions.extend([*keep, function_proto(opset_of(model), bias=with_bias)])
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    model.ir_version = max(model.ir_version, 10)


def standalone_model(
    n: int,
    k: int,
    bits: int,
    group_size: int,
    dtype: int = TensorProto.FLOAT,
    opset: int = 21,
    bias: bool = False,
) -> onnx.ModelProto:
    """A one-node model with every operand a graph input (x [M, K], dynamic M; bias [N] with `bias`)."""
    inputs = [
        helper.make_tensor_value_info("x", dtype, ["M", k]),
        helper.make_tensor_value_info("qweight", TensorProto.UINT8, [n, k * bits // 8]),
        helper.make_tensor_value_info("scales", dtype, [n, k // group_size]),
        helper.make_tensor_value_info("zeros", dtype, [n, k // group_size]),
    ]
    if bias:
        inputs.append(helper.make_tensor_value_info("bias", dtype, [n]))
    graph = helper.make_graph(
        [make_node([i.name for i in inputs], "y", bits, group_size, name="gqmm")],
        "group_quant_matmul",
        inputs,
        [helper.make_tensor_value_info("y", dtype, ["M", n])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
        functions=[function_proto(opset, bias=bias)],
    )
    model.ir_version = 10
    return model
