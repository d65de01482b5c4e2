"""GatedLinearAttention as an ONNX local function (domain `trtforge`, version 1).

    o, state_out = GatedLinearAttention(q, k, v, g, state)
    q, k, g [B, H, T, Dk]; v [B, H, T, Dv]; state, state_out [B, H, Dk, Dv]; o [B, H, T, Dv]
    S_t = diag(g_t) S_{t-1} + k_t v_tᵀ, o_t = S_tᵀ q_t, S_0 = state, state_out = S_T; gates in (0, 1].

Prefill passes the whole prompt (state zeros or a cached state); decode passes T = 1
and carries the state between calls. The body is the fully parallel form (one chunk
of reference.chunked), computed in float32 and cast back to the inputs' types:

    L = cumsum(log g) over T;  D[t, s] = exp(L_t - L_s) for s <= t, else 0 (masked before exp)
    o = (Σ_d q_td k_sd D[t, s, d]) · v + (q ⊙ e^L) · S_0
    state_out = diag(e^{L_T}) S_0 + (k ⊙ e^{L_T - L})ᵀ · v

It needs memory O(B·H·T²·Dk): the reference semantics for onnxruntime and the
TensorRT-RTX fallback, not a fast path (that is the plugin's chunked kernel).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from plugins_cuda import DOMAIN, DOMAIN_VERSION
from plugins_cuda.onnx_common import MIN_OPSET, Body

OP = "GatedLinearAttention"
INPUTS = ["q", "k", "v", "g", "state"]
OUTPUTS = ["o", "state_out"]


def function_proto(opset: int = 21) -> onnx.FunctionProto:
    if opset < MIN_OPSET:
        raise ValueError(f"{OP} needs opset >= {MIN_OPSET}, got {opset}")
    b = Body("gla")
    q, k, v, g, s0 = (b.op("Cast", name, to=TensorProto.FLOAT) for name in INPUTS)

    def axes(*values: int) -> str:
        return b.const(list(values), np.int64)

    log_cum = b.op("CumSum", b.op("Log", g), b.const(2, np.int64))  # [B, H, T, Dk]
    diff = b.op("Sub", b.op("Unsqueeze", log_cum, axes(3)), b.op("Unsqueeze", log_cum, axes(2)))  # [B,H,T,T,Dk]
    steps = b.op("Gather", b.op("Shape", q), b.const(2, np.int64), axis=0)
    idx = b.op("Range", b.const(0, np.int64), steps, b.const(1, np.int64))
    after = b.op("Less", b.op("Unsqueeze", idx, axes(1)), b.op("Unsqueeze", idx, axes(0)))  # t < s
    causal = b.op("Unsqueeze", b.op("Not", after), axes(2))  # [T, T, 1]
    decay = b.op("Exp", b.op("Where", causal, diff, b.const(-np.inf)))
    pairs = b.op("Mul", b.op("Unsqueeze", q, axes(3)), b.op("Unsqueeze", k, axes(2)))
    scores = b.op("ReduceSum", b.op("Mul", pairs, decay), axes(-1), keepdims=0)  # [B, H, T, T]
    from_state = b.op("MatMul", b.op("Mul", q, b.op("Exp", log_cum)), s0)
    o = b.op("Add", b.op("MatMul", scores, v), from_state)
    last = b.op("Slice", log_cum, axes(-1), b.const([np.iinfo(np.int64).max], np.int64), axes(2))  # [B,H,1,Dk]
    keep = b.op("Mul", b.op("Transpose", b.op("Exp", last), perm=[0, 1, 3, 2]), s0)
    weighted = b.op("Transpose", b.op("Mul", k, b.op("Exp", b.op("Sub", last, log_cum))), perm=[0, 1, 3, 2])
    state = b.op("Add", keep, b.op("MatMul", weighted, v))
    b.nodes.append(helper.make_node("CastLike", [o, "q"], ["o"]))
    b.nodes.append(helper.make_node("CastLike", [state, "state"], ["state_out"]))
    return helper.make_function(
        DOMAIN, OP, INPUTS, OUTPUTS, b.nodes, opset_imports=[helper.make_opsetid("", opset)], attributes=[]
    )


def make_node(inputs: list[str], outputs: list[str], name: str = "") -> onnx.NodeProto:
    return helper.make_node(OP, inputs, outputs, name=name or None, domain=DOMAIN)


def standalone_model(heads: int, dk: int, dv: int, dtype: int = TensorProto.FLOAT, opset: int = 21) -> onnx.ModelProto:
    """One GatedLinearAttention node, batch and sequence dynamic: for tests and benches."""
    qk = ["B", heads, "T", dk]
    graph = helper.make_graph(
        [make_node(INPUTS, OUTPUTS, name="gla")],
        "gated_linear_attention",
        [
            helper.make_tensor_value_info("q", dtype, qk),
            helper.make_tensor_value_info("k", dtype, qk),
            helper.make_tensor_value_info("v", dtype, ["B", heads, "T", dv]),
            helper.make_tensor_value_info("g", dtype, qk),
            helper.make_tensor_value_info("state", dtype, ["B", heads, dk, dv]),
        ],
        [
            helper.make_tensor_value_info("o", dtype, ["B", heads, "T", dv]),
            helper.make_tensor_value_info("state_out", dtype, ["B", heads, dk, dv]),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
        functions=[function_proto(opset)],
    )
    model.ir_version = 10
    return model
