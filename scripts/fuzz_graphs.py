"""Random, valid ONNX graphs shaped like what exporters write, for the pass fuzzer.

Why a generator of its own: the hypothesis strategy of the property tests
(tests/graph_strategies.py) builds tiny elementwise graphs; the passes' real targets are
the subgraphs exporters emit (Conv/BN/Pad stacks, RepVGG branches, MatMul+bias chains,
Shape->Gather->Concat->Reshape arithmetic, decomposed LayerNorm/RMSNorm/GELU, attention
blocks). This module writes those, in the spellings exporters vary (operand order, Pow or
Mul, Div or Mul by the reciprocal, ReduceMean axes as attribute or input by opset), next to
what must not be rewritten (non-zero pads, padded following convs, shared weights,
graph outputs in the middle of a pattern), so a pass that is not exact shows it on
onnxruntime outputs.

`generate(seed, index)` is deterministic: example `index` uses its own generator seeded
from (seed, index), so any example can be rebuilt alone. Every graph is meant to pass
`onnx.checker.check_model(full_check=True)` and to run in onnxruntime CPU at batch sizes
`BATCHES` (dynamic batch) or its fixed batch; one that does not is a bug here.
Blocks record the families they cover in `FuzzGraph.families` (FAMILIES lists them).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSETS = tuple(range(13, 21))
IR_VERSIONS = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9}  # the lowest each opset needs
BATCH = 2  # the batch the graph is built at (the fixed batch of static graphs)
BATCHES = (2, 3)  # the batch sizes fed to a dynamic-batch graph, one per run
BATCH_DIM = "N"
BROADCAST_DIM = "M"  # a second input's dynamic dim that broadcasts against the batch: 1, then equal to it
BROADCAST_SIZES = (1, BATCHES[1])
INT64_MAX = np.iinfo(np.int64).max
FAMILIES = (
    "conv",
    "batchnorm",
    "pad",
    "pooling",
    "linear",
    "gemm",
    "scale_bias",
    "residual",
    "shape_arith",
    "reshape_ops",
    "layernorm",
    "rmsnorm",
    "gelu_erf",
    "gelu_tanh",
    "attention",
    "passthrough",
    "duplicate",
    "const_expr",
    "repvgg",
    "repmlp",
    "outputs",
    "near_miss",
    "opset_sensitive",
    "dynamic_broadcast",
)


@dataclass(frozen=True)
class Value:
    """A tensor of the graph being built: its name and concrete shape (dim 0 is the batch)."""

    name: str
    shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def kind(self) -> str:
        return {4: "image", 3: "seq", 2: "vec"}.get(self.rank, "other")


@dataclass
class FuzzGraph:
    """One generated example and what it was built from."""

    model: onnx.ModelProto
    seed: int
    index: int
    opset: int
    dtype: str
    dynamic: bool
    families: list[str] = field(default_factory=list)


class Builder:
    """Accumulates nodes, initializers and I/O of one graph; every name it hands out is fresh."""

    def __init__(self, rng: np.random.Generator, opset: int, dtype: np.dtype, dynamic: bool):
        self.rng, self.opset, self.dtype, self.dynamic = rng, opset, np.dtype(dtype), dynamic
        self.elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.families: set[str] = set()
        self._counter = itertools.count()
        self._floats: list[tuple[str, np.ndarray]] = []  # float constants made, for duplicates

    # --- names, randomness -------------------------------------------------------------

    def fresh(self, prefix: str) -> str:
        return f"{prefix}_{next(self._counter)}"

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick(self, options: Sequence):
        return options[int(self.rng.integers(len(options)))]

    # --- constants ---------------------------------------------------------------------

    def _add_initializer(self, array: np.ndarray, prefix: str) -> str:
        name = self.fresh(prefix)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def const(self, array: np.ndarray, prefix: str = "c", share: bool = True) -> str:
        """A float initializer in the graph's dtype. With `share`, sometimes the same values
        again under a new name (duplicate initializers) or an earlier constant itself."""
        array = np.asarray(array, self.dtype)
        if share and self._floats and self.chance(0.2):
            same = [(n, a) for n, a in self._floats if a.shape == array.shape]
            if same:
                name, values = self.pick(same)
                if self.chance(0.5):
                    return name  # one initializer read by two nodes
                return self._add_initializer(values.copy(), prefix)  # equal bytes, another name
        name = self._add_initializer(array, prefix)
        self._floats.append((name, array))
        return name

    def scalar(self, value: float, prefix: str = "k", rank0: bool = False) -> str:
        """A one-element float constant, shaped [] or [1] (exporters write both); `rank0`: [] only."""
        shape = () if rank0 or self.chance(0.7) else (1,)
        return self._add_initializer(np.full(shape, value, self.dtype), prefix)

    def ints(self, values: Sequence[int] | int, prefix: str = "i") -> str:
        return self._add_initializer(np.asarray(values, np.int64), prefix)

    def array(self, values: np.ndarray, prefix: str = "a") -> str:
        """An initializer in the array's own dtype (bool masks, flags, copies of constants)."""
        return self._add_initializer(np.asarray(values), prefix)

    def weight(self, *shape: int, fan_in: int | None = None) -> str:
        scale = 1.0 / math.sqrt(fan_in or shape[0])
        return self.const(self.rng.standard_normal(shape) * scale, "w")

    def vector(self, n: int, low: float = -0.5, high: float = 0.5) -> np.ndarray:
        return self.rng.uniform(low, high, n)

    # --- nodes -------------------------------------------------------------------------

    def node(self, op: str, inputs: Sequence[str], shape: Sequence[int], **attrs) -> Value:
        """Append a one-output node; its output has `shape` (the builder's bookkeeping)."""
        out = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=self.fresh(f"n_{op}"), **attrs))
        return Value(out, tuple(shape))

    def raw(self, op: str, inputs: Sequence[str], n_out: int = 1, **attrs) -> list[str]:
        """Append a node whose outputs are not activations (shape arithmetic, extra outputs)."""
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.fresh(f"n_{op}"), **attrs))
        return outs

    def binary(self, op: str, a: str, b: str, shape: Sequence[int]) -> Value:
        """a op b, operands swapped at random for the commutative ops."""
        if op in ("Add", "Mul", "Max", "Min") and self.chance(0.5):
            a, b = b, a
        return self.node(op, [a, b], shape)

    # --- opset-dependent spellings -----------------------------------------------------

    def reduce_mean(self, x: Value, axes: list[int], keepdims: int = 1) -> Value:
        kept = {a % x.rank for a in axes}
        if keepdims:
            shape = [1 if i in kept else d for i, d in enumerate(x.shape)]
        else:
            shape = [d for i, d in enumerate(x.shape) if i not in kept]
        if self.opset >= 18:
            return self.node("ReduceMean", [x.name, self.ints(axes, "axes")], shape, keepdims=keepdims)
        return self.node("ReduceMean", [x.name], shape, axes=axes, keepdims=keepdims)

    def unsqueeze(self, name: str, axes: list[int]) -> str:
        return self.raw("Unsqueeze", [name, self.ints(axes, "axes")])[0]

    def squeeze(self, x: Value, axes: list[int]) -> Value:
        shape = [d for i, d in enumerate(x.shape) if i not in [a % x.rank for a in axes]]
        return self.node("Squeeze", [x.name, self.ints(axes, "axes")], shape)

    def shape_of(self, x: Value, start: int | None = None) -> str:
        """Shape(x), sometimes with Shape's start attribute (opset >= 15) when `start` is given."""
        if start is not None and self.opset >= 15:
            return self.raw("Shape", [x.name], start=start)[0]
        shape = self.raw("Shape", [x.name])[0]
        if start is None:
            return shape
        return self.raw("Slice", [shape, self.ints([start]), self.ints([x.rank])])[0]

    def dim_of(self, x: Value, axis: int) -> str:
        """Shape(x)[axis] as a 1-D int64 tensor, the way exporters write it (Gather of a scalar
        index then Unsqueeze, or of a 1-D index; sometimes through Casts, as TorchScript does)."""
        shape = self.shape_of(x)
        if self.chance(0.5):
            dim = self.raw("Gather", [shape, self.ints(axis, "idx")], axis=0)[0]
            dim = self.unsqueeze(dim, [0])
        else:
            dim = self.raw("Gather", [shape, self.ints([axis], "idx")], axis=0)[0]
        if self.chance(0.1):
            dim = self.raw("Cast", [dim], to=TensorProto.INT64)[0]  # a no-op Cast
        elif self.chance(0.1):
            narrow = self.raw("Cast", [dim], to=TensorProto.INT32)[0]
            dim = self.raw("Cast", [narrow], to=TensorProto.INT64)[0]
        return dim

    def target(self, x: Value, shape: Sequence[int], keep: int) -> str:
        """A Reshape target for `shape` whose first `keep` dims equal x's: a constant (0 or -1 for
        the batch when dynamic) or Shape -> Gather -> Concat arithmetic."""
        style = self.pick(["const", "arith", "arith"])
        if style == "const":
            dims = list(shape)
            if self.dynamic or self.chance(0.5):
                dims[0] = 0
                for i in range(1, keep):
                    dims[i] = 0 if self.chance(0.5) else dims[i]
            if self.chance(0.3) and -1 not in dims and len(dims) > keep:
                dims[-1] = -1
            return self.ints(dims, "shape")
        self.families.add("shape_arith")
        if keep > 1 and self.chance(0.4):  # one Shape, sliced: Slice(Shape(x), 0, keep)
            parts = [self.raw("Slice", [self.shape_of(x), self.ints([0]), self.ints([keep])])[0]]
        else:
            parts = [self.dim_of(x, i) for i in range(keep)]
        rest = list(shape[keep:])
        if rest and self.chance(0.3):
            rest[-1] = -1
        return self.raw("Concat", [*parts, self.ints(rest, "tail")] if rest else parts, axis=0)[0]

    def reshape(self, x: Value, shape: Sequence[int], keep: int = 1) -> Value:
        return self.node("Reshape", [x.name, self.target(x, shape, keep)], shape)

    # --- graph I/O ---------------------------------------------------------------------

    def io_dims(self, shape: Sequence[int]) -> list[int | str]:
        return [BATCH_DIM if i == 0 and self.dynamic else d for i, d in enumerate(shape)]

    def add_input(self, shape: Sequence[int], name: str = "x", dims: list[int | str] | None = None) -> Value:
        """A graph input of the graph's dtype; `dims` overrides the declared dims (symbols)."""
        dims = self.io_dims(shape) if dims is None else dims
        self.inputs.append(helper.make_tensor_value_info(name, self.elem, dims))
        return Value(name, tuple(shape))

    def add_output(self, value: Value, elem: int | None = None, dims: list[int | str] | None = None) -> None:
        dims = self.io_dims(value.shape) if dims is None else dims
        self.outputs.append(helper.make_tensor_value_info(value.name, elem or self.elem, dims))

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "fuzz", self.inputs, self.outputs, initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], producer_name="fuzz")
        model.ir_version = IR_VERSIONS[self.opset]
        return model


Block = Callable[[Builder, Value], Value]

# --------------------------------------------------------------------------------------
# Elementwise, pass-through, duplicates, constant expressions (any rank)
# --------------------------------------------------------------------------------------

ACTIVATIONS = ("Relu", "Sigmoid", "Tanh", "Abs", "Neg")


def activation(b: Builder, x: Value) -> Value:
    return b.node(b.pick(ACTIVATIONS), [x.name], x.shape)


def passthrough(b: Builder, x: Value) -> Value:
    """Identity, inference Dropout or no-op Cast, one to three in a row."""
    b.families.add("passthrough")
    for _ in range(int(b.rng.integers(1, 4))):
        kind = b.pick(["Identity", "Dropout", "Cast"])
        if kind == "Cast":
            x = b.node("Cast", [x.name], x.shape, to=b.elem)
        elif kind == "Dropout":
            inputs = [x.name]
            if b.chance(0.5):
                inputs.append(b.scalar(float(b.rng.uniform(0.1, 0.5)), "ratio", rank0=True))
                if b.chance(0.5):
                    inputs.append(b.array(np.array(False), "training"))
            n_out = 2 if b.chance(0.3) else 1  # the mask output, unused
            outs = b.raw("Dropout", inputs, n_out=n_out)
            x = Value(outs[0], x.shape)
        else:
            x = b.node("Identity", [x.name], x.shape)
    return x


def duplicate(b: Builder, x: Value) -> Value:
    """The same computation twice on one input (a common subexpression), combined."""
    b.families.add("duplicate")
    if x.kind in ("seq", "vec") and b.chance(0.4):
        w = b.weight(x.shape[-1], x.shape[-1])
        w2 = w if b.chance(0.5) else b.array(numpy_helper.to_array(_init(b, w)).copy(), "w")
        left = b.node("MatMul", [x.name, w], x.shape)
        right = b.node("MatMul", [x.name, w2], x.shape)
    else:
        op = b.pick(["Relu", "Sigmoid", "Tanh"])
        left, right = b.node(op, [x.name], x.shape), b.node(op, [x.name], x.shape)
    return b.binary(b.pick(["Add", "Mul", "Max", "Sub"]), left.name, right.name, x.shape)


def near_duplicate(b: Builder, x: Value) -> Value:
    """Two nodes with one op and one input but different attributes (not common subexpressions),
    combined: Softmax / LeakyRelu / ReduceMean / Transpose pairs."""
    b.families.add("near_miss")
    kinds = (
        ["softmax", "reduce"] + (["leaky"] if b.dtype != np.float64 else []) + (["transpose"] if x.rank >= 3 else [])
    )
    kind = b.pick(kinds)
    if kind == "softmax":
        left = b.node("Softmax", [x.name], x.shape, axis=-1)
        right = b.node("Softmax", [x.name], x.shape, axis=1 if b.chance(0.7) else x.rank - 1)
    elif kind == "leaky":
        left = b.node("LeakyRelu", [x.name], x.shape, alpha=0.1)
        right = b.node("LeakyRelu", [x.name], x.shape, alpha=float(b.pick([0.1, 0.2])))
    elif kind == "reduce":
        left, right = b.reduce_mean(x, [-1]), b.reduce_mean(x, [1])
        return b.binary("Add", x.name, b.binary("Add", left.name, right.name, x.shape).name, x.shape)
    else:
        perm = [*range(x.rank - 2), x.rank - 1, x.rank - 2]
        shape = (*x.shape[:-2], x.shape[-1], x.shape[-2])
        left = b.node("Transpose", [x.name], shape, perm=perm)
        right = b.node("Transpose", [x.name], shape, perm=perm)
        back = b.node("Transpose", [b.binary("Add", left.name, right.name, shape).name], x.shape, perm=perm)
        return back
    return b.binary("Add", left.name, right.name, x.shape)


def _init(b: Builder, name: str) -> onnx.TensorProto:
    return next(t for t in b.initializers if t.name == name)


def const_expr(b: Builder, x: Value) -> Value:
    """x op (c1 op c2): the constant part folds."""
    b.families.add("const_expr")
    n = x.shape[-1]
    c1 = b.const(b.rng.uniform(0.5, 1.5, n), share=False)
    c2 = b.const(b.rng.uniform(0.5, 1.5, n), share=False)
    folded = b.node(b.pick(["Add", "Mul", "Sub", "Div"]), [c1, c2], (n,))
    if b.chance(0.3):
        folded = b.node("Sqrt", [b.node("Abs", [folded.name], (n,)).name], (n,))
    return b.binary(b.pick(["Add", "Mul"]), x.name, folded.name, x.shape)


def channel_const(b: Builder, x: Value, values: np.ndarray) -> str:
    """A per-channel constant for x: axis 1 for images ([C,1,1] or [1,C,1,1]), the last axis otherwise."""
    if x.kind == "image":
        shape = (values.size, 1, 1) if b.chance(0.5) else (1, values.size, 1, 1)
    else:
        shape = b.pick([(values.size,), (1, values.size), (1,) * (x.rank - 1) + (values.size,)])
    return b.const(values.reshape(shape))


def unit_ops(b: Builder, x: Value) -> Value:
    """x * 1, 1 * x, x / 1 (one-element ones of rank <= x's), and near misses: ones of a higher
    rank (they broadcast x up; squeezed back), 1 / x."""
    kind = b.pick(["mul", "mul", "div", "higher_rank", "reciprocal"])
    one = b.array(np.ones((1,) * int(b.rng.integers(0, x.rank + 1)), b.dtype), "one")
    if kind == "mul":
        return b.binary("Mul", x.name, one, x.shape)
    if kind == "div":
        return b.node("Div", [x.name, one], x.shape)
    b.families.add("near_miss")
    if kind == "reciprocal":
        return b.node("Div", [one, b.node("Sigmoid", [x.name], x.shape).name], x.shape)
    ones = b.array(np.ones((1,) * (x.rank + 1), b.dtype), "ones")
    return b.squeeze(b.binary("Mul", x.name, ones, (1, *x.shape)), [0])


def reshape_noops(b: Builder, x: Value) -> Value:
    """Constant Reshapes that keep the shape ([0, ..., -1] or static dims) and Reshape chains
    (the outer target with or without a 0, which copies the inner result's dims)."""
    if b.chance(0.5):
        dims = [0 if i == 0 or b.chance(0.5) else d for i, d in enumerate(x.shape)]
        if b.chance(0.5):
            dims[int(b.rng.integers(1, x.rank)) if x.rank > 1 else 0] = -1
        return b.node("Reshape", [x.name, b.ints(dims, "shape")], x.shape)
    flat = int(np.prod(x.shape[1:]))
    keep_batch = b.chance(0.5)
    inner = b.raw("Reshape", [x.name, b.ints([0, flat] if keep_batch else [-1], "shape")])[0]
    if keep_batch and b.chance(0.4):
        outer = [0, *x.shape[1:]]  # the 0 copies the inner result's batch dim
    else:
        outer = [-1, *x.shape[1:]] if b.dynamic or b.chance(0.5) else list(x.shape)
    return b.node("Reshape", [inner, b.ints(outer, "shape")], x.shape)


def scale_shift(b: Builder, x: Value) -> Value:
    """x * s, x / s, x + c or x - c by a scalar or per-channel constant."""
    b.families.add("scale_bias")
    channels = x.shape[1] if x.kind == "image" else x.shape[-1]
    op = b.pick(["Mul", "Div", "Add", "Sub"])
    low, high = (0.5, 2.0) if op in ("Mul", "Div") else (-0.5, 0.5)
    if b.chance(0.3):
        c = b.scalar(float(b.rng.uniform(low, high)), "s")
    else:
        c = channel_const(b, x, b.rng.uniform(low, high, channels))
    if op in ("Sub", "Div"):
        return b.node(op, [x.name, c], x.shape)
    return b.binary(op, x.name, c, x.shape)


# --------------------------------------------------------------------------------------
# Image blocks (NCHW)
# --------------------------------------------------------------------------------------


def conv_out(size: int, k: int, pads: tuple[int, int], stride: int, dilation: int = 1, ceil: bool = False) -> int:
    span = size + pads[0] + pads[1] - dilation * (k - 1) - 1
    return (-(-span // stride) if ceil else span // stride) + 1


def ceil_is_unambiguous(size: int, k: int, pads: tuple[int, int], stride: int) -> bool:
    """ceil_mode where no last window starts in the right padding: there onnx's shape inference
    and runtimes disagree (some drop that window), so the generator does not go there."""
    return (conv_out(size, k, pads, stride, ceil=True) - 1) * stride < size + pads[0]


Kernel = tuple[int, int]


def _centred(kernel: Kernel, dilation: int) -> list[int]:
    """Centred ("same") pads [top, left, bottom, right] for odd kernels."""
    ph, pw = (dilation * (k - 1) // 2 for k in kernel)
    return [ph, pw, ph, pw]


def _fits(x: Value, kernel: Kernel, pads: list[int], dilation: int) -> bool:
    return all(
        x.shape[2 + i] + pads[i] + pads[2 + i] >= dilation * (kernel[i] - 1) + 1 and pads[i] >= 0 for i in range(2)
    )


def conv(
    b: Builder,
    x: Value,
    cout: int | None = None,
    kernel: Kernel | None = None,
    pads: list[int] | None = None,
    stride: int = 1,
    dilation: int = 1,
    group: int = 1,
    bias: bool | None = None,
    auto_pad: str | None = None,
) -> Value:
    """Conv with constant weights; centred ("same") pads by default, else the pads given;
    `auto_pad` SAME_UPPER / VALID instead of pads. Falls back to 1x1 where the kernel does not fit."""
    b.families.add("conv")
    cin = x.shape[1]
    cout = cout or cin
    kernel = kernel or b.pick([(1, 1), (3, 3), (3, 3)])
    if pads is None:
        pads = _centred(kernel, dilation) if b.chance(0.8) else [0, 0, 0, 0]
    if not _fits(x, kernel, [0] * 4 if auto_pad == "VALID" else pads, dilation):
        kernel, pads, dilation, auto_pad = (1, 1), [0, 0, 0, 0], 1, None
    weight = b.weight(cout, cin // group, *kernel, fan_in=cin // group * kernel[0] * kernel[1])
    inputs = [x.name, weight]
    if b.chance(0.6) if bias is None else bias:
        inputs.append(b.const(b.vector(cout)))
    attrs: dict = {"kernel_shape": list(kernel)}
    if auto_pad is None:
        attrs["pads"] = pads
    else:
        attrs["auto_pad"] = auto_pad
    if stride != 1:
        attrs["strides"] = [stride, stride]
    if dilation != 1:
        attrs["dilations"] = [dilation, dilation]
    if group != 1:
        attrs["group"] = group
    spatial = []
    for i, size in enumerate(x.shape[2:]):
        if auto_pad == "SAME_UPPER":
            spatial.append(-(-size // stride))
        else:
            p = (0, 0) if auto_pad == "VALID" else (pads[i], pads[2 + i])
            spatial.append(conv_out(size, kernel[i], p, stride, dilation))
    return b.node("Conv", inputs, (x.shape[0], cout, *spatial), **attrs)


def conv_transpose(b: Builder, x: Value) -> Value:
    """ConvTranspose (stride 1 or 2, grouped sometimes) [-> BN]: BN folds into it per output channel."""
    b.families.add("conv")
    cin = x.shape[1]
    cout = int(b.pick([2, 4, 6]))
    group = 2 if cin % 2 == 0 and b.chance(0.3) else 1
    k, stride = int(b.pick([1, 2, 3])), int(b.pick([1, 1, 2]))
    p = int(b.rng.integers(0, (k - 1) // 2 + 1)) if k > 1 else 0
    inputs = [x.name, b.weight(cin, cout // group, k, k, fan_in=cin * k * k // group)]
    if b.chance(0.5):
        inputs.append(b.const(b.vector(cout)))
    attrs: dict = {"kernel_shape": [k, k], "pads": [p, p, p, p]}
    if stride != 1:
        attrs["strides"] = [stride, stride]
    if group != 1:
        attrs["group"] = group
    spatial = [(d - 1) * stride - 2 * p + k for d in x.shape[2:]]
    y = b.node("ConvTranspose", inputs, (x.shape[0], cout, *spatial), **attrs)
    return batchnorm(b, y) if b.chance(0.7) else y


def batchnorm(b: Builder, x: Value) -> Value:
    """BatchNormalization in inference form (training_mode=0 spelled out sometimes, opset >= 14)."""
    b.families.add("batchnorm")
    c = x.shape[1]
    params = [
        b.const(b.rng.uniform(0.5, 1.5, c), "gamma", share=False),
        b.const(b.vector(c), "beta", share=False),
        b.const(b.vector(c), "mean", share=False),
        b.const(b.rng.uniform(0.5, 2.0, c), "var", share=False),
    ]
    attrs = {}
    if b.chance(0.5):
        attrs["epsilon"] = float(b.pick([1e-5, 1e-3]))
    if b.opset >= 14 and b.chance(0.3):
        attrs["training_mode"] = 0
    return b.node("BatchNormalization", [x.name, *params], x.shape, **attrs)


def conv_block(b: Builder, x: Value) -> Value:
    """Conv [-> BN] [-> activation]: square or 1xk/kx1 kernels, sometimes strided, dilated,
    depthwise, with asymmetric pads or auto_pad; or a ConvTranspose."""
    if b.chance(0.12):
        return conv_transpose(b, x)
    cin = x.shape[1]
    depthwise = b.chance(0.2)
    stride = 2 if b.chance(0.15) and min(x.shape[2:]) >= 6 else 1
    cout = cin if depthwise else int(b.pick([2, 3, 4, 6, 8]))
    kernel = b.pick([(1, 1), (3, 3), (3, 3), (3, 3), (1, 3), (3, 1), (5, 5), (2, 2)])
    dilation = 2 if b.chance(0.1) else 1
    pads = None if b.chance(0.85) else [int(v) for v in b.rng.integers(0, 3, 4)]
    dilated_same = dilation != 1  # onnxruntime has no dilated SAME_UPPER
    auto_pad = b.pick(["SAME_UPPER", "VALID"]) if b.chance(0.08) and not dilated_same else None
    y = conv(b, x, cout, kernel, pads, stride, dilation, group=cin if depthwise else 1, auto_pad=auto_pad)
    if b.chance(0.6):
        y = batchnorm(b, y)
    if b.chance(0.6):
        y = activation(b, y)
    return y


def bn_then_conv(b: Builder, x: Value) -> Value:
    """[activation ->] BN -> Conv (sometimes depthwise or strided): the BN folds forward only into
    an unpadded Conv."""
    y = batchnorm(b, activation(b, x) if b.chance(0.5) else x)
    kernel = b.pick([(1, 1), (3, 3), (3, 3), (1, 3)])
    pads = _centred(kernel, 1) if b.chance(0.4) else [0, 0, 0, 0]
    depthwise = b.chance(0.25)
    stride = 2 if b.chance(0.15) and min(y.shape[2:]) >= 6 else 1
    cout = y.shape[1] if depthwise else int(b.pick([2, 4, 6]))
    return conv(b, y, cout, kernel, pads, stride=stride, group=y.shape[1] if depthwise else 1)


def _pads_tensor(b: Builder, x: Value, spatial: list[int]) -> tuple[list[str], list[int]]:
    """The Pad inputs (pads [, constant_value [, axes]]) and the full [begin..., end...] pads."""
    full = [0, 0, spatial[0], spatial[1], 0, 0, spatial[2], spatial[3]]
    if b.chance(0.1):  # a channel pad: never foldable into the conv's spatial pads
        full[1] = 1
    if b.chance(0.08) and min(x.shape[2:]) >= 4:  # a crop: negative pads
        full[2] = -1
    value = None
    if b.chance(0.5):
        value = b.scalar(0.0 if b.chance(0.8) else 0.5, "padval", rank0=True)
    if b.opset >= 18 and full[1] == 0 and b.chance(0.4):
        axes = [2, 3] if b.chance(0.5) else [-2, -1]
        inputs = [b.ints([full[2], full[3], full[6], full[7]], "pads"), value or "", b.ints(axes, "axes")]
        return inputs, full
    return [b.ints(full, "pads")] + ([value] if value else []), full


def pad_block(b: Builder, x: Value) -> Value:
    """Pad (zeros, usually) -> Conv / AveragePool / MaxPool: the "same" padding exporters write."""
    b.families.add("pad")
    spatial = [int(v) for v in b.rng.integers(0, 3, 4)]
    inputs, full = _pads_tensor(b, x, spatial)
    mode = "constant" if b.chance(0.85) else "reflect"
    if mode == "reflect":
        spatial = [min(p, d - 1) for p, d in zip(spatial, [*x.shape[2:], *x.shape[2:]], strict=True)]
        full = [0, 0, spatial[0], spatial[1], 0, 0, spatial[2], spatial[3]]
        inputs = [b.ints(full, "pads")]
    attrs = {"mode": mode} if mode != "constant" or b.chance(0.3) else {}
    shape = tuple(d + full[i] + full[i + 4] for i, d in enumerate(x.shape))
    padded = b.node("Pad", [x.name, *inputs], shape, **attrs)
    reader = b.pick(["Conv", "Conv", "AveragePool", "MaxPool"])
    if reader == "Conv":
        kernel = b.pick([(1, 1), (3, 3), (3, 3)])
        pads = _centred(kernel, 1) if b.chance(0.3) else [0, 0, 0, 0]
        return conv(b, padded, int(b.pick([2, 4])), kernel, pads, auto_pad="VALID" if b.chance(0.15) else None)
    return pool(b, padded, op=reader)


def pool(b: Builder, x: Value, op: str | None = None) -> Value:
    """MaxPool / AveragePool (kernel, stride, pads, ceil_mode, count_include_pad) or GlobalAveragePool."""
    b.families.add("pooling")
    op = op or b.pick(["MaxPool", "AveragePool", "GlobalAveragePool"])
    if op == "GlobalAveragePool":
        return b.node(op, [x.name], (*x.shape[:2], 1, 1))
    k = int(b.pick([1, 2, 3])) if min(x.shape[2:]) >= 3 else 1
    stride = int(b.pick([1, 1, 2]))
    p = int(b.rng.integers(0, (k - 1) // 2 + 1)) if k > 1 else 0
    ceil = b.chance(0.2) and all(ceil_is_unambiguous(d, k, (p, p), stride) for d in x.shape[2:])
    attrs = {"kernel_shape": [k, k], "strides": [stride, stride], "pads": [p, p, p, p]}
    if ceil:
        attrs["ceil_mode"] = 1
    if op == "AveragePool" and b.chance(0.5):
        attrs["count_include_pad"] = 1
    shape = (*x.shape[:2], *(conv_out(d, k, (p, p), stride, ceil=ceil) for d in x.shape[2:]))
    return b.node(op, [x.name], shape, **attrs)


def conv_chain(b: Builder, x: Value) -> Value:
    """Conv -> [per-channel scale/shift] -> pointwise Conv: one Conv after fold-linear."""
    b.families.add("conv")
    stride = 2 if b.chance(0.2) and min(x.shape[2:]) >= 6 else 1
    y = conv(b, x, cout=int(b.pick([2, 3, 4])), stride=stride, dilation=2 if b.chance(0.1) else 1)
    if b.chance(0.5):
        y = scale_shift(b, y)
    if b.chance(0.15):  # a depthwise pointwise conv: per-channel scale, not foldable as a chain
        return conv(b, y, cout=y.shape[1], kernel=(1, 1), group=y.shape[1])
    return conv(b, y, cout=int(b.pick([2, 4, 6])), kernel=(1, 1))


def _add_tree(b: Builder, terms: list[Value]) -> Value:
    """Sum the terms with Adds in a random association order."""
    terms = list(terms)
    while len(terms) > 1:
        i = int(b.rng.integers(len(terms) - 1))
        left, right = terms.pop(i), terms.pop(i)
        shape = tuple(np.broadcast_shapes(left.shape, right.shape))
        terms.insert(i, b.binary("Add", left.name, right.name, shape))
    return terms[0]


REPVGG_STYLES = ("repvgg", "repvgg", "acnet", "depthwise", "dilated", "misaligned", "strided")


def _rep_branches(b: Builder, x: Value, style: str) -> list[Value]:
    """The conv branches of one re-parameterizable block (same output shape each)."""
    c = x.shape[1]
    if style == "acnet":  # 3x3 + 1x3 + 3x1, centred
        return [conv(b, x, c, k, _centred(k, 1)) for k in ((3, 3), (1, 3), (3, 1))]
    if style == "misaligned":  # equal output shapes, kernels not aligned: must not merge
        return [conv(b, x, c, (3, 3), [1, 1, 1, 1]), conv(b, x, c, (3, 3), [2, 1, 0, 1])]
    if style == "strided":
        return [conv(b, x, c, (3, 3), [1, 1, 1, 1], stride=2), conv(b, x, c, (1, 1), [0, 0, 0, 0], stride=2)]
    group = c if style == "depthwise" else 1
    dilation = 2 if style == "dilated" else 1
    return [
        conv(b, x, c, (3, 3), _centred((3, 3), dilation), dilation=dilation, group=group),
        conv(b, x, c, (1, 1), [0, 0, 0, 0], group=group),
    ]


def repvgg(b: Builder, x: Value) -> Value:
    """RepVGG / ACNet branches on one input summed: kxk (+BN), 1x1 (+BN), identity (BN, x or x*s);
    also depthwise, dilated, strided and misaligned variants."""
    b.families.add("repvgg")
    c = x.shape[1]
    style = b.pick(REPVGG_STYLES)
    if min(x.shape[2:]) < 3:
        style = "repvgg"
    branches = [batchnorm(b, br) if b.chance(0.4) else br for br in _rep_branches(b, x, style)]
    identity = "none" if style == "strided" else b.pick(["bn", "x", "scale", "none"])
    if identity == "bn":
        branches.append(batchnorm(b, x))
    elif identity == "x":
        branches.append(x)
    elif identity == "scale":
        branches.append(b.binary("Mul", x.name, channel_const(b, x, b.rng.uniform(0.5, 1.5, c)), x.shape))
    if b.chance(0.2):
        branches.append(Value(channel_const(b, x, b.vector(c)), (1, c, 1, 1)))
    b.rng.shuffle(branches)
    return _add_tree(b, branches)


def to_vector(b: Builder, x: Value) -> Value:
    """Image -> [B, F]: GlobalAveragePool + Flatten, Flatten, ReduceMean over H,W, or a Reshape."""
    style = b.pick(["gap_flatten", "flatten", "reduce", "reshape"])
    if style == "gap_flatten":
        b.families.add("pooling")
        pooled = b.node("GlobalAveragePool", [x.name], (*x.shape[:2], 1, 1))
        return b.node("Flatten", [pooled.name], x.shape[:2], axis=1)
    if style == "flatten":
        b.families.add("reshape_ops")
        return b.node("Flatten", [x.name], (x.shape[0], int(np.prod(x.shape[1:]))), axis=1)
    if style == "reduce":
        return b.reduce_mean(x, [2, 3], keepdims=0)
    return b.reshape(x, (x.shape[0], int(np.prod(x.shape[1:]))))


# --------------------------------------------------------------------------------------
# Sequence / vector blocks ([B, S, D] / [B, D])
# --------------------------------------------------------------------------------------


def linear(b: Builder, x: Value, n: int | None = None, bias: bool | None = None) -> Value:
    """MatMul(x, W) [+ bias] (bias [N], [1, N] or [1, 1, N], either operand order); 2-D x may get a Gemm."""
    b.families.add("linear")
    k = x.shape[-1]
    n = n or int(b.pick([4, 6, 8, 12, 16]))
    if x.kind == "vec" and b.chance(0.35):
        return gemm(b, x, n)
    y = b.node("MatMul", [x.name, b.weight(k, n)], (*x.shape[:-1], n))
    if b.chance(0.6) if bias is None else bias:
        shape = b.pick([(n,), (1, n), (1,) * (x.rank - 1) + (n,)])
        y = b.binary("Add", y.name, b.const(b.vector(n).reshape(shape)), y.shape)
    return y


def gemm(b: Builder, x: Value, n: int) -> Value:
    """Gemm(x, W or Wᵀ, C) with alpha / beta / transB / C variants."""
    b.families.add("gemm")
    k = x.shape[-1]
    trans_b = b.chance(0.5)
    w = b.weight(n, k, fan_in=k) if trans_b else b.weight(k, n)
    trans_a = b.chance(0.15)
    a = b.node("Transpose", [x.name], (k, x.shape[0]), perm=[1, 0]).name if trans_a else x.name
    inputs = [a, w]
    if b.chance(0.7):
        inputs.append(b.const(b.vector(n).reshape(b.pick([(n,), (1, n)]))))
    attrs = {}
    if trans_a:
        attrs["transA"] = 1
    if trans_b:
        attrs["transB"] = 1
    if b.chance(0.3):
        attrs["alpha"] = float(b.pick([0.5, 2.0]))
    if len(inputs) > 2 and b.chance(0.3):
        attrs["beta"] = float(b.pick([0.5, 2.0]))
    return b.node("Gemm", inputs, (x.shape[0], n), **attrs)


def linear_chain(b: Builder, x: Value) -> Value:
    """[x * s ->] linear -> [scale / shift ->] linear [-> scale / shift]: foldable into fewer ops."""
    if b.chance(0.4):
        x = scale_shift(b, x)
    y = linear(b, x)
    if b.chance(0.5):
        y = scale_shift(b, y)
    y = linear(b, y)
    if b.chance(0.4):
        y = scale_shift(b, y)
    return y


def vec_batchnorm(b: Builder, x: Value) -> Value:
    """linear -> BatchNormalization on [B, F] (channels on axis 1): folds into the MatMul / Gemm."""
    return batchnorm(b, linear(b, x))


def residual(b: Builder, x: Value) -> Value:
    """x + f(x) for a shape-preserving f."""
    b.families.add("residual")
    if x.kind == "image":
        f = b.pick([lambda: conv(b, x, x.shape[1], (3, 3), [1, 1, 1, 1]), lambda: conv_block_same(b, x)])
    else:
        f = b.pick([lambda: linear(b, x, n=x.shape[-1]), lambda: mlp(b, x), lambda: activation(b, x)])
    y = f()
    return b.binary("Add", x.name, y.name, x.shape)


def conv_block_same(b: Builder, x: Value) -> Value:
    y = conv(b, x, x.shape[1], (3, 3), [1, 1, 1, 1])
    return activation(b, batchnorm(b, y) if b.chance(0.5) else y)


def mlp(b: Builder, x: Value) -> Value:
    """linear -> GELU (erf or tanh form) -> linear back to the input width."""
    hidden = linear(b, x, n=int(b.pick([8, 12, 16])))
    act = gelu_tanh(b, hidden) if b.chance(0.4) or b.dtype == np.float64 else gelu_erf(b, hidden)
    return linear(b, act, n=x.shape[-1])


def _product(b: Builder, factors: list[str], shape: tuple[int, ...]) -> Value:
    """The product of three factors in a random association order."""
    b.rng.shuffle(factors)
    inner = b.binary("Mul", factors[0], factors[1], shape)
    return b.binary("Mul", inner.name, factors[2], shape)


def _constants(b: Builder, exact: dict[str, float]) -> dict[str, float]:
    """The pattern's constants; sometimes one of them off by a few percent (a near miss: not
    the pattern, so a fusing pass must leave it)."""
    values = dict(exact)
    if b.chance(0.1):
        b.families.add("near_miss")
        key = b.pick(sorted(values))
        values[key] *= float(b.pick([0.97, 1.05]))
    return values


def gelu_erf(b: Builder, x: Value) -> Value:
    """x * 0.5 * (1 + erf(x / sqrt(2))), the division sometimes a multiplication by 1/sqrt(2)."""
    b.families.add("gelu_erf")
    c = _constants(b, {"half": 0.5, "one": 1.0, "sqrt2": math.sqrt(2.0)})
    if b.chance(0.5):
        scaled = b.node("Div", [x.name, b.scalar(c["sqrt2"])], x.shape)
    else:
        scaled = b.binary("Mul", x.name, b.scalar(1 / c["sqrt2"]), x.shape)
    erf = b.node("Erf", [scaled.name], x.shape)
    one_plus = b.binary("Add", erf.name, b.scalar(c["one"]), x.shape)
    return _product(b, [x.name, one_plus.name, b.scalar(c["half"])], x.shape)


def gelu_tanh(b: Builder, x: Value) -> Value:
    """x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))), the cube as Pow or x*x*x."""
    b.families.add("gelu_tanh")
    c = _constants(b, {"half": 0.5, "one": 1.0, "cube": 0.044715, "scale": math.sqrt(2.0 / math.pi)})
    if b.chance(0.5):
        cube = b.node("Pow", [x.name, b.scalar(3.0)], x.shape)
    else:
        square = b.node("Mul", [x.name, x.name], x.shape)
        cube = b.binary("Mul", x.name, square.name, x.shape)
    inner = b.binary("Mul", cube.name, b.scalar(c["cube"]), x.shape)
    summed = b.binary("Add", x.name, inner.name, x.shape)
    arg = b.binary("Mul", summed.name, b.scalar(c["scale"]), x.shape)
    one_plus = b.binary("Add", b.node("Tanh", [arg.name], x.shape).name, b.scalar(c["one"]), x.shape)
    return _product(b, [x.name, one_plus.name, b.scalar(c["half"])], x.shape)


def _last_axes(b: Builder, x: Value) -> list[int]:
    """The last axis as -1 or rank-1; for rank >= 3 sometimes the one before (a near miss)."""
    if x.rank >= 3 and b.chance(0.08):
        b.families.add("near_miss")
        return [-2]
    return [-1] if b.chance(0.6) else [x.rank - 1]


def _square(b: Builder, x: Value) -> Value:
    if b.chance(0.5):
        return b.node("Pow", [x.name, b.scalar(2.0)], x.shape)
    return b.node("Mul", [x.name, x.name], x.shape)


def _gamma_beta(b: Builder, y: Value, beta: bool) -> Value:
    d = y.shape[-1]
    if b.chance(0.75):
        gamma = b.const(b.rng.uniform(0.5, 1.5, d if b.chance(0.9) else 1), "gamma", share=False)
        y = b.binary("Mul", y.name, gamma, y.shape)
    if beta and b.chance(0.75):
        y = b.binary("Add", y.name, b.const(b.vector(d), "beta", share=False), y.shape)
    return y


def layernorm(b: Builder, x: Value) -> Value:
    """(x - mean) / sqrt(mean((x - mean)^2) + eps) [* gamma] [+ beta], as exporters decompose it."""
    b.families.add("layernorm")
    axes = _last_axes(b, x)
    mean = b.reduce_mean(x, axes)
    centred = b.node("Sub", [x.name, mean.name], x.shape)
    var = b.reduce_mean(_square(b, centred), axes)
    eps = b.scalar(float(b.pick([1e-5, 1e-6, 1e-12])) if b.dtype != np.float16 else 1e-5, "eps")
    std = b.node("Sqrt", [b.binary("Add", var.name, eps, var.shape).name], var.shape)
    return _gamma_beta(b, b.node("Div", [centred.name, std.name], x.shape), beta=True)


def rmsnorm(b: Builder, x: Value) -> Value:
    """x / sqrt(mean(x^2) + eps) or x * rsqrt(...) (Reciprocal or 1/...) [* gamma]."""
    b.families.add("rmsnorm")
    axes = _last_axes(b, x)
    ms = b.reduce_mean(_square(b, x), axes)
    eps = b.scalar(1e-6 if b.dtype != np.float16 else 1e-5, "eps")
    rms = b.node("Sqrt", [b.binary("Add", ms.name, eps, ms.shape).name], ms.shape)
    style = b.pick(["div", "reciprocal", "one_over"])
    if style == "div":
        y = b.node("Div", [x.name, rms.name], x.shape)
    else:
        if style == "reciprocal":
            inv = b.node("Reciprocal", [rms.name], rms.shape)
        else:
            inv = b.node("Div", [b.scalar(1.0), rms.name], rms.shape)
        y = b.binary("Mul", x.name, inv.name, x.shape)
    return _gamma_beta(b, y, beta=False)


def _heads(b: Builder, t: Value, heads: int) -> Value:
    """[B, S, D] -> [B, S, H, dh] (constant target or Shape arithmetic)."""
    bsz, s, d = t.shape
    return b.reshape(t, (bsz, s, heads, d // heads), keep=2)


def attention(b: Builder, x: Value) -> Value:
    """Q/K/V projections, heads, QKᵀ, scale, optional additive mask, Softmax, PV, heads merged, output projection."""
    b.families.add("attention")
    bsz, s, d = x.shape
    heads = int(b.pick([h for h in (1, 2, 4) if d % h == 0]))
    dh = d // heads
    q, k, v = (linear(b, x, n=d) for _ in range(3))
    qh = b.node("Transpose", [_heads(b, q, heads).name], (bsz, heads, s, dh), perm=[0, 2, 1, 3])
    vh = b.node("Transpose", [_heads(b, v, heads).name], (bsz, heads, s, dh), perm=[0, 2, 1, 3])
    kr = _heads(b, k, heads)
    if b.chance(0.5):
        kt = b.node("Transpose", [kr.name], (bsz, heads, dh, s), perm=[0, 2, 3, 1])
    else:
        kh = b.node("Transpose", [kr.name], (bsz, heads, s, dh), perm=[0, 2, 1, 3])
        kt = b.node("Transpose", [kh.name], (bsz, heads, dh, s), perm=[0, 1, 3, 2])
    where = b.pick(["scores_mul", "scores_div", "query", "none"])
    if where == "query":
        qh = b.binary("Mul", qh.name, b.scalar(1 / math.sqrt(dh)), qh.shape)
    scores = b.node("MatMul", [qh.name, kt.name], (bsz, heads, s, s))
    if where == "scores_mul":
        scores = b.binary("Mul", scores.name, b.scalar(1 / math.sqrt(dh)), scores.shape)
    elif where == "scores_div":
        scores = b.node("Div", [scores.name, b.scalar(math.sqrt(dh))], scores.shape)
    scores = _masked(b, scores, s)
    upcast = b.dtype == np.float16 and b.chance(0.5)  # Softmax in float32 between Casts
    if upcast:
        scores = b.node("Cast", [scores.name], scores.shape, to=TensorProto.FLOAT)
    probs = b.node("Softmax", [scores.name], scores.shape, axis=b.pick([-1, 3]))
    if upcast:
        probs = b.node("Cast", [probs.name], probs.shape, to=b.elem)
    if b.chance(0.15):  # the SDPA exporters' guard: Where(IsNaN(P), 0, P)
        isnan = b.raw("IsNaN", [probs.name])[0]
        probs = b.node("Where", [isnan, b.scalar(0.0, "zero"), probs.name], probs.shape)
    ctx = b.node("MatMul", [probs.name, vh.name], (bsz, heads, s, dh))
    merged = b.node("Transpose", [ctx.name], (bsz, s, heads, dh), perm=[0, 2, 1, 3])
    return linear(b, b.reshape(merged, (bsz, s, d), keep=2), n=d)


def _keep(b: Builder, s: int) -> np.ndarray:
    """Which keys each query sees, [S, S]: causal, or all but the last key; never a row of none."""
    keep = np.tril(np.ones((s, s), bool)) if b.chance(0.5) else np.arange(s)[None, :] < max(1, s - 1)
    return np.broadcast_to(keep, (s, s))


def _masked(b: Builder, scores: Value, s: int) -> Value:
    """The scores, sometimes masked: + a constant additive mask, + a mask graph input, or
    Where(keep, scores, -inf / float min) either way round."""
    style = b.pick(["none", "none", "add", "input", "where"])
    shape = (s, s) if b.chance(0.5) else (1, 1, s, s)
    if style == "add":
        low = -1e4 if b.dtype == np.float16 else float(b.pick([-1e4, -1e9, np.finfo(np.float32).min]))
        mask = b.const(np.where(_keep(b, s), 0.0, low).reshape(shape), "mask", share=False)
        return b.binary("Add", scores.name, mask, scores.shape)
    if style == "input":
        dims = [scores.shape[0], 1, 1, s]
        mask = b.add_input(dims, b.fresh("mask"), b.io_dims(dims))
        return b.binary("Add", scores.name, mask.name, scores.shape)
    if style == "where":
        fill = b.scalar(float(b.pick([-np.inf, np.finfo(b.dtype).min])), "fill")
        keep = _keep(b, s).reshape(shape)
        if b.chance(0.5):
            return b.node("Where", [b.array(keep, "keep"), scores.name, fill], scores.shape)
        return b.node("Where", [b.array(~keep, "masked"), fill, scores.name], scores.shape)
    return scores


def repmlp(b: Builder, x: Value) -> Value:
    """Parallel MatMul branches of one input summed, with the input itself sometimes (RepMLP)."""
    b.families.add("repmlp")
    d = x.shape[-1]
    branches = [b.node("MatMul", [x.name, b.weight(d, d)], x.shape) for _ in range(2)]
    if b.chance(0.5):
        branches.append(x)
    if b.chance(0.3):
        branches.append(Value(b.const(b.vector(d)), (d,)))
    b.rng.shuffle(branches)
    return _add_tree(b, branches)


# --------------------------------------------------------------------------------------
# Shape manipulation (any rank, kept-shape round trips)
# --------------------------------------------------------------------------------------


def split_last(b: Builder, x: Value) -> Value:
    """Reshape the last dim into [2, D/2], Transpose the pair, Reshape back (values permuted)."""
    d = x.shape[-1]
    if d % 2:
        return activation(b, x)
    split = b.reshape(x, (*x.shape[:-1], 2, d // 2), keep=x.rank - 1)
    perm = [*range(x.rank - 1), x.rank, x.rank - 1]
    swapped = b.node("Transpose", [split.name], (*x.shape[:-1], d // 2, 2), perm=perm)
    if b.chance(0.4):  # back to x's own Shape
        return b.node("Reshape", [swapped.name, b.shape_of(x)], x.shape)
    return b.reshape(swapped, x.shape, keep=x.rank - 1)


def slice_rotate(b: Builder, x: Value) -> Value:
    """Concat(x[..., k:], x[..., :k]) on the last axis (INT64_MAX ends sometimes)."""
    d = x.shape[-1]
    if d < 2:
        return activation(b, x)
    k = int(b.rng.integers(1, d))
    axis = b.ints([-1] if b.chance(0.5) else [x.rank - 1], "axes")
    end = INT64_MAX if b.chance(0.3) else d
    head = b.node("Slice", [x.name, b.ints([0]), b.ints([k]), axis], (*x.shape[:-1], k))
    tail = b.node("Slice", [x.name, b.ints([k]), b.ints([end]), axis], (*x.shape[:-1], d - k))
    return b.node("Concat", [tail.name, head.name], x.shape, axis=-1)


def full_slice(b: Builder, x: Value) -> Value:
    """x[..., 0:Shape(x)[-1]]: a Slice that copies its input, end read through Shape."""
    end = b.raw("Gather", [b.shape_of(x), b.ints([x.rank - 1], "idx")], axis=0)[0]
    return b.node("Slice", [x.name, b.ints([0]), end, b.ints([x.rank - 1], "axes")], x.shape)


def gather_perm(b: Builder, x: Value) -> Value:
    """Gather along the last axis with a permutation of its indices."""
    perm = b.rng.permutation(x.shape[-1])
    return b.node("Gather", [x.name, b.ints(perm, "perm")], x.shape, axis=x.rank - 1 if b.chance(0.5) else -1)


def unsqueeze_squeeze(b: Builder, x: Value) -> Value:
    """Unsqueeze a unit axis in, [an activation,] Squeeze it out."""
    axis = int(b.rng.integers(1, x.rank + 1))
    up = Value(b.unsqueeze(x.name, [axis]), (*x.shape[:axis], 1, *x.shape[axis:]))
    if b.chance(0.5):
        up = activation(b, up)
    return b.squeeze(up, [axis])


def expand_noop(b: Builder, x: Value) -> Value:
    """Expand(x, Shape(x)) or Expand(x, [1, ..., D]): it changes nothing."""
    if b.chance(0.5):
        return b.node("Expand", [x.name, b.shape_of(x)], x.shape)
    return b.node("Expand", [x.name, b.ints([1] * (x.rank - 1) + [x.shape[-1]], "shape")], x.shape)


def merge_split(b: Builder, x: Value) -> Value:
    """Split the last dim in two, then merge it back with a target whose last entry is the
    product of two dims: Concat(Shape[:r-1], Mul(Shape[r-1], Shape[r]))."""
    d = x.shape[-1]
    if d % 2:
        return activation(b, x)
    split = b.reshape(x, (*x.shape[:-1], 2, d // 2), keep=x.rank - 1)
    act = activation(b, split)
    head = b.raw("Slice", [b.shape_of(act), b.ints([0]), b.ints([x.rank - 1])])[0]
    product = b.raw("Mul", [b.dim_of(act, x.rank - 1), b.dim_of(act, x.rank)])[0]
    target = b.raw("Concat", [head, product], axis=0)[0]
    return b.node("Reshape", [act.name, target], x.shape)


def expand_broadcast(b: Builder, x: Value) -> Value:
    """x[:, :1] expanded back to x's shape (Expand that changes the shape: not a no-op)."""
    first = b.node("Slice", [x.name, b.ints([0]), b.ints([1]), b.ints([1], "axes")], (x.shape[0], 1, *x.shape[2:]))
    if b.chance(0.5):
        return b.node("Expand", [first.name, b.shape_of(x)], x.shape)
    dims = b.raw("Concat", [b.dim_of(x, 0), b.ints(list(x.shape[1:]), "tail")], axis=0)[0]
    return b.node("Expand", [first.name, dims], x.shape)


def slice_to_other_dim(b: Builder, x: Value) -> Value:
    """x[..., :Shape(x)[1]] on the last axis, where dim 1 differs from it (a real slice), or
    equals it (a no-op)."""
    end = b.dim_of(x, 1)
    size = min(x.shape[1], x.shape[-1])
    return b.node("Slice", [x.name, b.ints([0]), end, b.ints([-1], "axes")], (*x.shape[:-1], size))


def transpose_round_trip(b: Builder, x: Value) -> Value:
    """Swap the last two axes, compute, swap back."""
    perm = [*range(x.rank - 2), x.rank - 1, x.rank - 2]
    shape = (*x.shape[:-2], x.shape[-1], x.shape[-2])
    t = activation(b, b.node("Transpose", [x.name], shape, perm=perm))
    return b.node("Transpose", [t.name], x.shape, perm=perm)


def shape_ops(b: Builder, x: Value) -> Value:
    b.families.add("reshape_ops")
    ops = [split_last, slice_rotate, full_slice, gather_perm, unsqueeze_squeeze, expand_noop, merge_split]
    if x.rank >= 3:
        ops += [transpose_round_trip, expand_broadcast, slice_to_other_dim]
    if x.kind == "vec":
        ops.append(lambda b, x: b.node("Flatten", [x.name], x.shape, axis=1))
    op = b.pick(ops)
    if op in (full_slice, expand_noop, split_last, merge_split, expand_broadcast, slice_to_other_dim):
        b.families.add("shape_arith")
    return op(b, x)


def dynamic_broadcast(b: Builder, x: Value) -> Value:
    """x + y for a second input y [M, 1, ..., D] (M is 1 in the first run, the batch in the second),
    with side outputs whose shapes follow M: Expand(f(y), Shape(x)) and Reshape(x, [Shape(y)[0], -1]).
    Symbolic shape inference may take M for the batch; only M == 1 shows it is not."""
    if not b.dynamic:
        return activation(b, x)
    b.families.add("dynamic_broadcast")
    shape = (1,) * (x.rank - 1) + (x.shape[-1],)
    y = b.add_input(shape, b.fresh("y"), [BROADCAST_DIM, *shape[1:]])
    ry = b.node("Relu", [y.name], shape)
    b.add_output(b.node("Expand", [ry.name, b.shape_of(x)], x.shape))
    target = b.raw("Concat", [b.dim_of(y, 0), b.ints([-1], "tail")], axis=0)[0]
    flat = b.raw("Reshape", [x.name, target])[0]
    b.outputs.append(helper.make_tensor_value_info(flat, b.elem, [BROADCAST_DIM, None]))
    return b.binary("Add", x.name, ry.name, x.shape)


REDUCE_OPS = ("ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp")


def reduction(b: Builder, x: Value) -> Value:
    """x - Reduce*(x, axes, keepdims=1): axes an input (ReduceSum from 13, the others from 18) or an
    attribute, which the opset upgrade must convert."""
    b.families.add("opset_sensitive")
    op = b.pick(REDUCE_OPS)
    axes = [int(b.rng.integers(1, x.rank))]
    shape = tuple(1 if i == axes[0] else d for i, d in enumerate(x.shape))
    if b.opset >= (13 if op == "ReduceSum" else 18):
        reduced = b.node(op, [x.name, b.ints(axes, "axes")], shape, keepdims=1)
    else:
        reduced = b.node(op, [x.name], shape, axes=axes, keepdims=1)
    return b.node("Sub", [x.name, reduced.name], x.shape)


def split_concat(b: Builder, x: Value) -> Value:
    """Split the last axis in two (split sizes as an input, or num_outputs from 18), one part
    through an activation, Concat back."""
    b.families.add("opset_sensitive")
    d = x.shape[-1]
    if d < 2:
        return activation(b, x)
    k = d // 2 if b.chance(0.6) else int(b.rng.integers(1, d))
    if b.opset >= 18 and d % 2 == 0 and k == d // 2 and b.chance(0.5):
        parts = b.raw("Split", [x.name], n_out=2, axis=-1, num_outputs=2)
    elif b.opset < 18 and d % 2 == 0 and k == d // 2 and b.chance(0.3):  # equal parts, no sizes given
        parts = b.raw("Split", [x.name], n_out=2, axis=-1)
    else:
        parts = b.raw("Split", [x.name, b.ints([k, d - k], "split")], n_out=2, axis=-1)
    first = b.node(b.pick(ACTIVATIONS), [parts[0]], (*x.shape[:-1], k))
    return b.node("Concat", [first.name, parts[1]], x.shape, axis=-1)


def pointwise(b: Builder, x: Value) -> Value:
    """Clip (min/max inputs, one omitted sometimes), LeakyRelu, HardSigmoid, Elu, Softplus, HardSwish,
    Softmax / LogSoftmax on any axis (13's per-axis meaning)."""
    b.families.add("opset_sensitive")
    ops = ["Clip", "Softmax", "LogSoftmax"]
    if b.dtype != np.float64:  # onnxruntime CPU has no double kernels for these (LeakyRelu: some opsets)
        ops += ["LeakyRelu", "HardSigmoid", "Elu", "Softplus"] + (["HardSwish"] if b.opset >= 14 else [])
    op = b.pick(ops)
    if op == "Clip":
        low, high = b.scalar(-0.5, "min", rank0=True), b.scalar(0.5, "max", rank0=True)
        inputs = [x.name, low, high] if b.chance(0.6) else b.pick([[x.name, "", high], [x.name, low]])
        return b.node("Clip", inputs, x.shape)
    if op in ("Softmax", "LogSoftmax"):
        return b.node(op, [x.name], x.shape, axis=int(b.rng.integers(-x.rank, x.rank)))
    if op == "LeakyRelu":
        return b.node(op, [x.name], x.shape, alpha=0.2)
    return b.node(op, [x.name], x.shape)


def resize(b: Builder, x: Value) -> Value:
    """Resize by 2 (nearest or linear; roi empty, scales an input) [-> 2x2 MaxPool back]."""
    b.families.add("opset_sensitive")
    scales = b.array(np.array([1, 1, 2, 2], np.float32), "scales")
    mode = b.pick(["nearest", "linear"])
    y = b.node("Resize", [x.name, "", scales], (*x.shape[:2], x.shape[2] * 2, x.shape[3] * 2), mode=mode)
    if b.chance(0.6):
        return b.node("MaxPool", [y.name], x.shape, kernel_shape=[2, 2], strides=[2, 2])
    return y


def seq_to_vec(b: Builder, x: Value) -> Value:
    """[B, S, D] -> [B, D]: the first token (Gather axis 1), or the mean over the sequence."""
    b.families.add("reshape_ops")
    if b.chance(0.5):
        return b.node("Gather", [x.name, b.ints(0, "idx")], (x.shape[0], x.shape[2]), axis=1)
    return b.reduce_mean(x, [1], keepdims=0)


# --------------------------------------------------------------------------------------
# Assembling an example
# --------------------------------------------------------------------------------------

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
