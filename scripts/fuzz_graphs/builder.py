"""The graph builder the blocks write with: values with shapes, initializers, opset-aware node spellings."""

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
