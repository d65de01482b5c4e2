"""Assembling an example: which blocks apply to a value, `generate` and `random_feeds`."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from scripts.fuzz_graphs.builder import (
    BATCH,
    BATCHES,
    BROADCAST_DIM,
    BROADCAST_SIZES,
    OPSETS,
    Block,
    Builder,
    FuzzGraph,
    Value,
)
from scripts.fuzz_graphs.elementwise import (
    activation,
    const_expr,
    duplicate,
    near_duplicate,
    passthrough,
    reshape_noops,
    scale_shift,
    unit_ops,
)
from scripts.fuzz_graphs.images import (
    batchnorm,
    bn_then_conv,
    conv_block,
    conv_chain,
    pad_block,
    pool,
    repvgg,
    to_vector,
)
from scripts.fuzz_graphs.sequences import (
    attention,
    gelu_erf,
    gelu_tanh,
    layernorm,
    linear,
    linear_chain,
    mlp,
    repmlp,
    residual,
    rmsnorm,
    vec_batchnorm,
)
from scripts.fuzz_graphs.shapes import (
    dynamic_broadcast,
    pointwise,
    reduction,
    resize,
    seq_to_vec,
    shape_ops,
    split_concat,
)

COMMON: dict[str, tuple[Block, float]] = {
    "activation": (activation, 1.0),
    "passthrough": (passthrough, 1.5),
    "duplicate": (duplicate, 1.0),
    "const_expr": (const_expr, 0.7),
    "scale_shift": (scale_shift, 1.0),
    "residual": (residual, 1.0),
    "shape_ops": (shape_ops, 1.5),
    "near_duplicate": (near_duplicate, 0.4),
    "unit_ops": (unit_ops, 0.4),
    "reshape_noops": (reshape_noops, 0.5),
    "reduction": (reduction, 0.4),
    "split_concat": (split_concat, 0.4),
    "pointwise": (pointwise, 0.5),
    "dynamic_broadcast": (dynamic_broadcast, 0.3),
}
IMAGE: dict[str, tuple[Block, float]] = {
    "conv_block": (conv_block, 3.0),
    "bn_then_conv": (bn_then_conv, 1.0),
    "pad_block": (pad_block, 1.5),
    "pool": (pool, 1.0),
    "conv_chain": (conv_chain, 1.0),
    "repvgg": (repvgg, 1.5),
    "batchnorm": (batchnorm, 0.5),
    "resize": (resize, 0.3),
}
SEQ: dict[str, tuple[Block, float]] = {
    "linear": (linear, 2.0),
    "linear_chain": (linear_chain, 1.5),
    "layernorm": (layernorm, 1.5),
    "rmsnorm": (rmsnorm, 1.0),
    "gelu_erf": (gelu_erf, 1.0),
    "gelu_tanh": (gelu_tanh, 1.0),
    "mlp": (mlp, 1.0),
    "attention": (attention, 1.5),
    "repmlp": (repmlp, 0.7),
}
VEC: dict[str, tuple[Block, float]] = {
    **{k: v for k, v in SEQ.items() if k != "attention"},
    "vec_batchnorm": (vec_batchnorm, 1.0),
}
NO_FLOAT64 = {"gelu_erf"}  # onnxruntime CPU has no double Erf (mlp picks the tanh form then)


def _blocks_for(x: Value, dtype: np.dtype) -> dict[str, tuple[Block, float]]:
    table = {"image": IMAGE, "seq": SEQ, "vec": VEC}[x.kind]
    blocks = {**COMMON, **table}
    if x.kind == "image" and min(x.shape[2:]) >= 2:
        blocks["to_vector"] = (to_vector, 0.4)
    if x.kind == "seq":
        blocks["seq_to_vec"] = (seq_to_vec, 0.3)
    if dtype == np.float64:
        blocks = {k: v for k, v in blocks.items() if k not in NO_FLOAT64}
    return blocks


def _choose_block(b: Builder, x: Value) -> Block:
    blocks = _blocks_for(x, b.dtype)
    names = sorted(blocks)
    weights = np.array([blocks[n][1] for n in names])
    return blocks[names[int(b.rng.choice(len(names), p=weights / weights.sum()))]][0]


def _input_shape(b: Builder, domain: str) -> tuple[int, ...]:
    if domain == "image":
        return (BATCH, int(b.pick([2, 3, 4])), int(b.rng.integers(5, 10)), int(b.rng.integers(5, 10)))
    d = int(b.pick([4, 8, 12, 16]))
    return (BATCH, int(b.rng.integers(2, 6)), d) if domain == "seq" else (BATCH, d)


def _outputs(b: Builder, live: list[Value], last: Value) -> None:
    """The main output (sometimes behind Identity chains), every other block result nothing
    reads (side branches: no dead code), intermediates read elsewhere, the same tensor
    listed twice, and a Shape tensor."""
    if b.chance(0.3):
        for _ in range(int(b.rng.integers(1, 3))):
            last = b.node("Identity", [last.name], last.shape)
    b.add_output(last)
    read = {name for node in b.nodes for name in node.input}
    for value in live[1:-1]:
        if value.name not in read:
            b.add_output(value)
    listed = {o.name for o in b.outputs}
    middle = [v for v in live[1:-1] if v.name not in listed]
    if middle and b.chance(0.4):
        b.families.add("outputs")
        b.add_output(b.pick(middle))
    if b.chance(0.12):
        b.families.add("outputs")
        b.add_output(last)  # the same tensor twice: onnx and onnxruntime allow it
    if b.chance(0.08):
        b.families.add("outputs")
        source = b.pick(live)
        shape = b.raw("Shape", [source.name])[0]
        b.outputs.append(helper.make_tensor_value_info(shape, TensorProto.INT64, [source.rank]))


def _dtype(rng: np.random.Generator, domain: str) -> np.dtype:
    if domain == "image":
        return np.dtype(np.float32)
    return np.dtype(str(rng.choice(["float32"] * 8 + ["float16", "float64"])))


def generate(seed: int, index: int) -> FuzzGraph:
    """Example `index` of the run seeded `seed` (its own generator: replayable alone)."""
    rng = np.random.default_rng([seed, index])
    domain = str(rng.choice(["image", "image", "seq", "seq", "vec"]))
    opset = int(rng.choice(OPSETS))
    dtype = _dtype(rng, domain)
    b = Builder(rng, opset, dtype, dynamic=bool(rng.random() < 0.4))
    x = b.add_input(_input_shape(b, domain))
    live = [x]
    for _ in range(int(rng.integers(2, 7))):
        source = live[-1] if b.chance(0.7) else b.pick(live)
        if source.kind == "other":
            source = live[-1]
        live.append(_choose_block(b, source)(b, source))
    _outputs(b, live, live[-1])
    return FuzzGraph(b.model(), seed, index, opset, dtype.name, b.dynamic, sorted(b.families))


def _dim(dim: onnx.TensorShapeProto.Dimension, run: int) -> int:
    if dim.HasField("dim_value"):
        return dim.dim_value
    return BROADCAST_SIZES[run] if dim.dim_param == BROADCAST_DIM else BATCHES[run]


def random_feeds(model: onnx.ModelProto, run: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs for run `run` (0 or 1) of a model: standard normal values; a symbolic dim is
    BATCHES[run] (a dynamic-batch graph runs at two batch sizes), BROADCAST_DIM BROADCAST_SIZES[run]."""
    feeds = {}
    initializers = {t.name for t in model.graph.initializer}
    for info in model.graph.input:
        if info.name in initializers:
            continue
        tensor = info.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        dims = [_dim(d, run) for d in tensor.shape.dim]
        if dtype.kind == "f":
            feeds[info.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype.kind == "b":
            feeds[info.name] = rng.random(dims) < 0.5
        else:
            feeds[info.name] = rng.integers(0, 2, dims).astype(dtype)
    return feeds
