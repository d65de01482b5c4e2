"""Min/max statistics computed inside the graph: onnxruntime reduces, only small arrays come back.

When no histogram is needed (minmax ranges, SmoothQuant's per-channel maxima), reduction
nodes are appended to the model while it is serialised for the session (the caller's
model is restored) and the session returns a few numbers per tensor instead of the
activations: no copies of the activations leave onnxruntime and the reductions run in
its thread pool.

Layout decides the cost more than arithmetic does. onnxruntime's CPU provider keeps
4-D float convolution activations in a blocked layout (NCHWc); Conv, pooling and Add
read such a tensor in place, any other reader gets a full copy back to NCHW first
(ReorderOutput). ReduceMin + ReduceMax on every activation of EfficientNet-Lite0 thus
took 2.5-3.9 s against 1.1 s of plain inference (256 images, 2 cores): the copies and
two more passes over memory. What follows takes 1.5-1.7 s. For each tensor t:

- 4-D float32 with C, H and W known from shape inference (value_info) and non-zero:
  GlobalMaxPool(t), which runs in the blocked layout; the [N, C, 1, 1] maxima come back
  and numpy takes their maximum; the element count is their number times H*W.
- any other float tensor: ReduceMax and Size, as scalars (GlobalMaxPool rejects empty
  tensors, and without NCHWc there is nothing to gain).
- either way ReduceMin (which pays for the copy) only where the graph does not bound t
  below (next paragraph);
- channel statistics (SmoothQuant): ReduceMax(Abs(t)) over every axis but the last.

Lower bounds: a tensor produced by Relu, Sigmoid, Softmax or a Clip whose constant
minimum is lo >= 0 (and whose maximum, if any, is a constant >= lo) never goes below that bound, and its recorded `min` is the bound
(not the observed minimum): the symmetric range quantization needs, max(|min|, |max|),
is then the maximum alone, exactly. Such activations (ReLU6 outputs feeding every
convolution of a MobileNet-style network) are also the largest ones.

Non-finite values: +inf shows in a maximum and -inf in a minimum and are flagged. NaN
is not reliably seen: onnxruntime's ReduceMin/ReduceMax and GlobalMaxPool drop a NaN
in most positions (measured: seen only first in a reduction, or last in a pool window).
Graph inputs are checked in numpy (and the calibration readers reject NaN), so only NaN
produced inside the model can go unflagged here; the histogram path sees every value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter.core.external_data import OrtWeights
from converter.core.model_io import opset_of
from converter.core.ort_session import serialized

# ops whose output never goes below 0 (Clip: its constant minimum, when >= 0)
NON_NEGATIVE_OPS = ("Relu", "Sigmoid", "Softmax")


def float_ranks(model: onnx.ModelProto, names: list[str]) -> dict[str, int]:
    """Rank of each float32/float16 tensor in `names` whose type and rank are known."""
    return {n: len(shape) for n, (_, shape) in _float_types(model, names).items()}


def _float_types(model: onnx.ModelProto, names: list[str]) -> dict[str, tuple[int, list[int | str]]]:
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    known = {}
    for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        tt = vi.type.tensor_type
        if tt.elem_type in floats and tt.HasField("shape"):
            known[vi.name] = (tt.elem_type, [d.dim_value if d.HasField("dim_value") else "?" for d in tt.shape.dim])
    return {n: known[n] for n in names if n in known}


def lower_bounds(model: onnx.ModelProto, names: list[str]) -> dict[str, float]:
    """The tensors of `names` that the graph keeps >= a bound lo >= 0, and that bound."""
    wanted, bounds = set(names), {}
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    for node in model.graph.node:
        if not node.output or node.output[0] not in wanted or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in NON_NEGATIVE_OPS:
            bounds[node.output[0]] = 0.0
        elif node.op_type == "Clip":
            lo = _clip_minimum(node, constants)
            if lo is not None and lo >= 0:
                bounds[node.output[0]] = lo
    return bounds


def _clip_minimum(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> float | None:
    """Clip's lower bound when min is a constant and max is absent or a constant >= min (Clip(x, 2, 1) is 1)."""
    attrs = {a.name: float(a.f) for a in node.attribute}  # opset < 11
    if "min" in attrs:
        return attrs["min"] if attrs.get("max", np.inf) >= attrs["min"] else None

    def scalar(index: int) -> float | None:
        name = node.input[index] if len(node.input) > index else ""
        value = numpy_helper.to_array(constants[name]) if name in constants else None
        return float(value.reshape(())) if value is not None and value.size == 1 else None

    lo, hi = scalar(1), scalar(2)
    has_max = len(node.input) > 2 and node.input[2] != ""
    if lo is None or not np.isfinite(lo) or (has_max and (hi is None or hi < lo)):
        return None
    return lo


def output_name(tensor: str, what: str) -> str:
    return f"{tensor}__trtforge_{what}"


@dataclass
class Reduction:
    """Where one tensor's reductions come back, and how to read them."""

    name: str
    max: str
    min: str | None  # None: the graph's lower bound `bound` stands for the minimum
    bound: float | None = None
    size: str | None = None  # None: count = size of the pooled maxima x `spatial` (H*W)
    spatial: int = 1
    cmax: str | None = None

    @property
    def outputs(self) -> list[str]:
        return [o for o in (self.max, self.min, self.size, self.cmax) if o is not None]


def _axes_input(name: str, axes: list[int], i: int) -> tuple[onnx.NodeProto, str]:
    value = helper.make_tensor(f"{name}__trtforge_axes", onnx.TensorProto.INT64, [len(axes)], axes)
    return helper.make_node("Constant", [], [value.name], name=f"trtforge_calib_axes_{i}", value=value), value.name


def reduction_nodes(
    model: onnx.ModelProto, names: list[str], channels: set[str], opset: int
) -> tuple[list[onnx.NodeProto], list[Reduction]]:
    types, bounds = _float_types(model, names), lower_bounds(model, names)
    nodes, plan = [], []
    for i, (name, (elem_type, shape)) in enumerate(types.items()):
        pooled = elem_type == onnx.TensorProto.FLOAT and len(shape) == 4 and all(d != "?" and d > 0 for d in shape[1:])
        r = Reduction(name, output_name(name, "max"), None, bounds.get(name))
        if pooled:
            nodes.append(helper.make_node("GlobalMaxPool", [name], [r.max], name=f"trtforge_calib_pool_{i}"))
            r.spatial = shape[2] * shape[3]
        else:
            r.size = output_name(name, "size")
            nodes += [
                helper.make_node("ReduceMax", [name], [r.max], name=f"trtforge_calib_max_{i}", keepdims=0),
                helper.make_node("Size", [name], [r.size], name=f"trtforge_calib_size_{i}"),
            ]
        if r.bound is None:
            r.min = output_name(name, "min")
            nodes.append(helper.make_node("ReduceMin", [name], [r.min], name=f"trtforge_calib_min_{i}", keepdims=0))
        if name in channels and len(shape) >= 2:
            absolute, r.cmax = f"{name}__trtforge_abs", output_name(name, "cmax")
            nodes.append(helper.make_node("Abs", [name], [absolute], name=f"trtforge_calib_abs_{i}"))
            axes = list(range(len(shape) - 1))
            if opset >= 18:  # axes became an input
                constant, axes_name = _axes_input(name, axes, i)
                nodes += [constant, helper.make_node("ReduceMax", [absolute, axes_name], [r.cmax], keepdims=0)]
            else:
                nodes.append(helper.make_node("ReduceMax", [absolute], [r.cmax], keepdims=0, axes=axes))
            nodes[-1].name = f"trtforge_calib_cmax_{i}"
        plan.append(r)
    return nodes, plan


def serialize_with_reductions(
    model: onnx.ModelProto, names: list[str], channels: set[str]
) -> tuple[tuple[bytes, OrtWeights], list[Reduction]]:
    """The model's bytes with the reduction nodes appended and their outputs as the graph outputs
    (with where a lazily loaded model's weights are: converter/core/ort_session.serialized)."""
    opset = opset_of(model) or 18
    nodes, plan = reduction_nodes(model, names, channels, opset)
    saved_outputs, count = list(model.graph.output), len(model.graph.node)
    model.graph.node.extend(nodes)
    del model.graph.output[:]
    model.graph.output.extend(onnx.ValueInfoProto(name=o) for r in plan for o in r.outputs)
    try:
        return serialized(model), plan
    finally:
        del model.graph.node[count:]
        del model.graph.output[:]
        model.graph.output.extend(saved_outputs)


def fold_reduced(stats, plan: list[Reduction], values: dict[str, np.ndarray]) -> None:
    """Update TensorStats from one run's reduction outputs."""
    for r in plan:
        s, maxima = stats[r.name], np.asarray(values[r.max])
        size = int(values[r.size]) if r.size is not None else maxima.size * r.spatial
        if not size:
            continue
        hi = float(maxima.max())
        lo = float(values[r.min]) if r.min is not None else r.bound
        if not (np.isfinite(lo) and np.isfinite(hi)):
            s.nonfinite += 1  # at least one: the exact count needs the values
            continue
        s.count += size
        s.min, s.max = min(s.min, lo), max(s.max, hi)
        if r.cmax is not None:
            cmax = np.asarray(values[r.cmax], np.float32)
            same = s.channel_amax is not None and s.channel_amax.shape == cmax.shape
            s.channel_amax = np.maximum(s.channel_amax, cmax) if same else cmax
