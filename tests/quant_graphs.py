"""Small known graphs for the quantization tests (placement rules, formats, SmoothQuant)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from calibration.data import from_feeds
from tests.onnx_helpers import make_model


def shaped_model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    """An opset-20 model with its shapes inferred (calibration and quantization read value_info)."""
    return onnx.shape_inference.infer_shapes(make_model(nodes, inputs, outputs, inits, opset=20, ir_version=10))


def attention_like(seed: int = 0, outlier: float = 0.0) -> onnx.ModelProto:
    """x[N,8,32] -> MatMul(W1) + b -> h; scores = h . h^T (activation x activation); out = scores . h.

    `outlier` scales input channel 3 of x's producer (a LayerNorm-like outlier channel)
    so SmoothQuant has something to migrate.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((32, 32)).astype(np.float32) * 0.2
    w0 = np.eye(32, dtype=np.float32)
    if outlier:
        w0[3, 3] = outlier
    inits = [
        numpy_helper.from_array(w0, "W0"),
        numpy_helper.from_array(w1, "W1"),
        numpy_helper.from_array(rng.standard_normal(32).astype(np.float32) * 0.1, "b1"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["x0"], name="mm0"),
        helper.make_node("MatMul", ["x0", "W1"], ["h0"], name="mm1"),
        helper.make_node("Add", ["h0", "b1"], ["h"], name="bias1"),
        helper.make_node("Transpose", ["h"], ["ht"], name="tr", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["h", "ht"], ["s"], name="bmm_scores"),
        helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "h"], ["y"], name="bmm_context"),
    ]
    return shaped_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 32])],
        inits,
    )


def conv_residual(seed: int = 0) -> onnx.ModelProto:
    """x -> Conv1 -> Relu -> Conv2 -> Add(., x) -> GlobalAveragePool -> Flatten -> Gemm(transB)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.1, "w1"),
        numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.1, "w2"),
        numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32) * 0.2, "wfc"),
        numpy_helper.from_array(np.zeros(32, np.float32), "bfc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "x"], ["res"], name="residual"),
        helper.make_node("GlobalAveragePool", ["res"], ["gap"], name="pool"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["logits"], name="fc", transB=1),
    ]
    return shaped_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 32])],
        inits,
    )


def mlp_stack(layers: int = 4, width: int = 256, seed: int = 0) -> onnx.ModelProto:
    """x[N,16,width] -> layers x (MatMul(W_i) -> Relu): distinct weights, big enough that weights dominate an engine."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}")]
        nodes += [helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    return shaped_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 16, width])],
        inits,
    )


def feeds_for(model: onnx.ModelProto, batches: int = 4, rows: int = 4, seed: int = 1) -> list[dict[str, np.ndarray]]:
    """Seeded inputs shaped like the graph input (these tests check arithmetic, not task accuracy)."""
    rng = np.random.default_rng(seed)
    vi = model.graph.input[0]
    dims = [d.dim_value for d in vi.type.tensor_type.shape.dim][1:]
    return [{vi.name: rng.standard_normal((rows, *dims)).astype(np.float32)} for _ in range(batches)]


def calibration(model: onnx.ModelProto, batches: int = 4, rows: int = 4):
    return from_feeds(feeds_for(model, batches, rows), "test")


def readers_of_dq(model: onnx.ModelProto) -> list[tuple[str, int]]:
    """(node name, input index) of every non-Q/DQ node input that a DequantizeLinear writes."""
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return sorted(
        (n.name, i)
        for n in model.graph.node
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
        for i, name in enumerate(n.input)
        if name in dq_outputs
    )


def norm_mlp(seed: int = 0, width: int = 64) -> onnx.ModelProto:
    """x[N,8,width] -> Mul(gamma, an RMSNorm's scale with uneven channels) -> MatMul(Wq), MatMul(Wk)
    (one input, two layers) -> Add -> Relu -> MatMul(Wo): AWQ's two cases, a foldable producer and not."""
    rng = np.random.default_rng(seed)
    gamma = np.exp(rng.standard_normal(width)).astype(np.float32)  # some channels far larger than others
    weights = {n: (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32) for n in ("Wq", "Wk", "Wo")}
    inits = [numpy_helper.from_array(gamma, "gamma")] + [numpy_helper.from_array(w, n) for n, w in weights.items()]
    nodes = [
        helper.make_node("Mul", ["x", "gamma"], ["normed"], name="norm_scale"),
        helper.make_node("MatMul", ["normed", "Wq"], ["q"], name="mm_q"),
        helper.make_node("MatMul", ["normed", "Wk"], ["k"], name="mm_k"),
        helper.make_node("Add", ["q", "k"], ["qk"], name="add"),
        helper.make_node("Relu", ["qk"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "Wo"], ["y"], name="mm_o"),
    ]
    return shaped_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, width])],
        inits,
    )


def correlated_feeds(model: onnx.ModelProto, batches: int = 8, rows: int = 8, seed: int = 3) -> list[dict]:
    """Inputs whose channels are correlated (x = z A, one A for every seed: one distribution), as a
    transformer's hidden states are."""
    rng = np.random.default_rng(seed)
    vi = model.graph.input[0]
    dims = [d.dim_value for d in vi.type.tensor_type.shape.dim][1:]
    mix = np.random.default_rng(0).standard_normal((dims[-1], dims[-1])) / np.sqrt(dims[-1]) + np.eye(dims[-1])
    return [{vi.name: (rng.standard_normal((rows, *dims)) @ mix).astype(np.float32)} for _ in range(batches)]
