"""Min/max statistics computed inside the graph: onnxruntime reduces, only scalars come back.

When no histogram is needed (minmax ranges, SmoothQuant's per-channel maxima), each
tensor t gets ReduceMin(t), ReduceMax(t), Size(t) and, for channel statistics,
ReduceMax(Abs(t)) over every axis but the last. The nodes are appended to the model
only while it is serialised for the session (the caller's model is restored), and the
session returns a few numbers per tensor instead of the activations: no copies of
the activations leave onnxruntime and the reductions run in its thread pool.
Non-finite values show up as an infinite or NaN min/max and are flagged.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

SUFFIXES = ("min", "max", "size", "cmax")


def float_ranks(model: onnx.ModelProto, names: list[str]) -> dict[str, int]:
    """Rank of each float32/float16 tensor in `names` whose type and rank are known."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    known = {}
    for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        tt = vi.type.tensor_type
        if tt.elem_type in floats and tt.HasField("shape"):
            known[vi.name] = len(tt.shape.dim)
    return {n: known[n] for n in names if n in known}


def output_name(tensor: str, what: str) -> str:
    return f"{tensor}__trtforge_{what}"


def reduction_nodes(ranks: dict[str, int], channels: set[str], opset: int) -> tuple[list[onnx.NodeProto], list[str]]:
    nodes, outputs = [], []
    for i, (name, rank) in enumerate(ranks.items()):
        mn, mx, size = (output_name(name, w) for w in ("min", "max", "size"))
        nodes += [
            helper.make_node("ReduceMin", [name], [mn], name=f"trtforge_calib_min_{i}", keepdims=0),
            helper.make_node("ReduceMax", [name], [mx], name=f"trtforge_calib_max_{i}", keepdims=0),
            helper.make_node("Size", [name], [size], name=f"trtforge_calib_size_{i}"),
        ]
        outputs += [mn, mx, size]
        if name in channels and rank >= 2:
            absolute, axes, cmax = f"{name}__trtforge_abs", f"{name}__trtforge_axes", output_name(name, "cmax")
            nodes.append(helper.make_node("Abs", [name], [absolute], name=f"trtforge_calib_abs_{i}"))
            if opset >= 18:  # axes became an input
                value = helper.make_tensor(axes, onnx.TensorProto.INT64, [rank - 1], list(range(rank - 1)))
                nodes += [
                    helper.make_node("Constant", [], [axes], name=f"trtforge_calib_axes_{i}", value=value),
                    helper.make_node(
                        "ReduceMax", [absolute, axes], [cmax], name=f"trtforge_calib_cmax_{i}", keepdims=0
                    ),
                ]
            else:
                nodes.append(
                    helper.make_node(
                        "ReduceMax",
                        [absolute],
                        [cmax],
                        name=f"trtforge_calib_cmax_{i}",
                        keepdims=0,
                        axes=list(range(rank - 1)),
                    )
                )
            outputs.append(cmax)
    return nodes, outputs


def serialize_with_reductions(
    model: onnx.ModelProto, ranks: dict[str, int], channels: set[str]
) -> tuple[bytes, list[str]]:
    """The model's bytes with the reduction nodes appended and their outputs as the graph outputs."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    nodes, outputs = reduction_nodes(ranks, channels, opset)
    saved_outputs, count = list(model.graph.output), len(model.graph.node)
    model.graph.node.extend(nodes)
    del model.graph.output[:]
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in outputs)
    try:
        return model.SerializeToString(), outputs
    finally:
        del model.graph.node[count:]
        del model.graph.output[:]
        model.graph.output.extend(saved_outputs)


def fold_reduced(stats, names: list[str], outputs: list[str], values: list[np.ndarray]) -> None:
    """Update TensorStats from one run's reduction outputs."""
    got = dict(zip(outputs, values, strict=True))
    for name in names:
        s = stats[name]
        lo, hi = float(got[output_name(name, "min")]), float(got[output_name(name, "max")])
        size = int(got[output_name(name, "size")])
        if not (np.isfinite(lo) and np.isfinite(hi)):
            s.nonfinite += 1  # at least one: the exact count needs the values
            continue
        s.count += size
        s.min, s.max = min(s.min, lo), max(s.max, hi)
        cmax = got.get(output_name(name, "cmax"))
        if cmax is not None:
            cmax = np.asarray(cmax, np.float32)
            same = s.channel_amax is not None and s.channel_amax.shape == cmax.shape
            s.channel_amax = np.maximum(s.channel_amax, cmax) if same else cmax
