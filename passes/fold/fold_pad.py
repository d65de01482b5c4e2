"""Fold a zero Pad into the pads of the Conv or AveragePool that reads it (exact).

Exporters write "same" padding as an explicit Pad before a Conv with pads 0
(EfficientNet-Lite's TorchScript export has 17). Conv and AveragePool pad with zeros
themselves, so the Pad's spatial pads can be added to theirs and the node removed.

A Pad folds only when all of these hold:
- mode is "constant" (absent means constant) and the padding value is 0 or absent
  (the `value` attribute before opset 11, the `constant_value` input from 11);
- pads are constant: the `pads` attribute (opset < 11) or a constant `pads` input;
- `axes` (opset 18 input) is absent or constant; negative axes count from the rank;
- every pad is >= 0 (negative pads crop) and the batch and channel pads are 0;
- its output is read by exactly one node, as that node's data input, and is not a
  graph output;
- that node is a Conv with auto_pad NOTSET/absent/VALID, or an AveragePool with
  count_include_pad=1 (the padded zeros must count in the average), ceil_mode 0
  (with ceil_mode, windows starting in the right padding are dropped, so the output
  shape could differ), auto_pad NOTSET/absent/VALID, and the summed pads stay below
  its kernel size (onnxruntime rejects pooling pads >= kernel).
The new pads are the node's pads (0 for VALID, which becomes NOTSET) plus the Pad's.
Every Pad left in place is recorded with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from passes.base import Pass, PassContext, PassResult
from passes.fold.sweep import Outcome, sweep
from passes.graph_utils import FreshNames
from passes.pattern_utils import constant_array


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional_input(node: gs.Node, index: int) -> gs.Tensor | None:
    if len(node.inputs) > index and node.inputs[index].name:
        return node.inputs[index]
    return None


def pad_amounts(pad: gs.Node, rank: int) -> np.ndarray | str:
    """The Pad's pads over all `rank` axes as [begin..., end...], or why they are unknown.

    Attribute form (opset < 11): `pads`, `value`. Input form: pads, constant_value,
    axes (opset 18). Padding with anything but zeros is not what Conv/AveragePool do.
    """
    if _text(pad.attrs.get("mode", "constant")) != "constant":
        return f"mode is '{_text(pad.attrs['mode'])}', not constant"
    if "pads" in pad.attrs:
        pads, value, axes = np.asarray(pad.attrs["pads"], np.int64), pad.attrs.get("value", 0.0), None
    else:
        pads_input = _optional_input(pad, 1)
        pads = None if pads_input is None else constant_array(pads_input)
        if pads is None:
            return "pads is not a constant"
        value_input = _optional_input(pad, 2)
        value = 0.0 if value_input is None else constant_array(value_input)
        axes_input = _optional_input(pad, 3)
        axes = None if axes_input is None else constant_array(axes_input)
        if axes_input is not None and axes is None:
            return "axes is not a constant"
    if value is None:
        return "constant_value is not a constant"
    if np.asarray(value).size > 1 or np.any(np.asarray(value) != 0):
        return f"pads with value {np.asarray(value).ravel().tolist()}, not 0"
    pads = np.asarray(pads, np.int64).ravel()
    axes_list = list(range(rank)) if axes is None else [int(a) + rank if a < 0 else int(a) for a in np.ravel(axes)]
    if len(pads) != 2 * len(axes_list) or len(set(axes_list)) != len(axes_list):
        return f"{len(pads)} pads do not match axes {axes_list} of a rank-{rank} input"
    if any(not 0 <= a < rank for a in axes_list):
        return f"axes {axes_list} out of range for rank {rank}"
    full = np.zeros(2 * rank, np.int64)
    for i, axis in enumerate(axes_list):
        full[axis], full[rank + axis] = pads[i], pads[len(axes_list) + i]
    return full


def _reader_check(graph: gs.Graph, pad: gs.Node) -> gs.Node | str:
    """The one Conv/AveragePool that may absorb this Pad, or why there is none."""
    y = pad.outputs[0]
    if any(t is y for t in graph.outputs):
        return "its output is a graph output"
    if len(y.outputs) != 1:
        return f"its output is read by {len(y.outputs)} nodes"
    node = y.outputs[0]
    if node.op not in ("Conv", "AveragePool"):
        return f"read by {node.op}, which does not zero-pad"
    if node.inputs[0] is not y or any(t is y for t in node.inputs[1:]):
        return f"{node.op} reads it other than as its data input"
    auto_pad = _text(node.attrs.get("auto_pad", "NOTSET"))
    if auto_pad not in ("NOTSET", "VALID"):
        return f"{node.op} has auto_pad={auto_pad}"
    if node.op == "AveragePool":
        if int(node.attrs.get("count_include_pad", 0)) != 1:
            return "AveragePool has count_include_pad=0: padded zeros would leave the average"
        if int(node.attrs.get("ceil_mode", 0)) != 0:
            return "AveragePool has ceil_mode=1: windows in the right padding would be dropped"
    return node


def _rank_of(node: gs.Node) -> int | None:
    """Rank of the data the node reads: 2 + spatial dims, from its kernel."""
    if node.op == "AveragePool":
        return 2 + len(node.attrs["kernel_shape"]) if "kernel_shape" in node.attrs else None
    weight = node.inputs[1]
    if weight.shape is not None:
        return len(weight.shape)
    data = node.inputs[0]
    return None if data.shape is None else len(data.shape)


@dataclass
class FoldPad(Pass):
    """Fold zero Pad nodes into the pads of the following Conv / AveragePool."""

    name = "fold-pad"
    level = "graph"
    exact = True
    keeps_types = True  # removes Pads only; the Conv/AveragePool outputs keep their shapes

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        # Until nothing folds, so that Pad -> Pad -> Conv folds completely in one run.
        return sweep(graph, self._visit, max_sweeps=None)  # each fold removes a Pad: it ends

    def _visit(self, graph: gs.Graph, names: FreshNames, node: gs.Node) -> list[Outcome]:
        if node.op != "Pad":
            return []
        reason = self._fold(graph, node)
        return [(True, "pad_folded") if reason is None else (False, f"Pad kept: {reason}")]

    @staticmethod
    def _fold(graph: gs.Graph, pad: gs.Node) -> str | None:
        """Rewrite one Pad into its reader; None on success, else why not."""
        reader = _reader_check(graph, pad)
        if isinstance(reader, str):
            return reader
        rank = _rank_of(reader)
        if rank is None or rank < 3:
            return f"rank of the {reader.op} input is unknown or below 3"
        full = pad_amounts(pad, rank)
        if isinstance(full, str):
            return full
        if np.any(full < 0):
            return f"negative pads {full.tolist()} crop the input"
        if np.any(full[[0, 1, rank, rank + 1]] != 0):
            return f"pads {full.tolist()} touch the batch or channel axis"
        spatial = rank - 2
        own = [0] * (2 * spatial)
        if _text(reader.attrs.get("auto_pad", "NOTSET")) == "NOTSET":
            own = [int(p) for p in reader.attrs.get("pads", own)]
        if len(own) != 2 * spatial:
            return f"{reader.op} pads {own} do not have {2 * spatial} entries"
        added = np.concatenate([full[2:rank], full[rank + 2 :]])
        pads = [int(p) + int(q) for p, q in zip(own, added, strict=True)]
        kernel = list(reader.attrs.get("kernel_shape", [])) * 2
        if reader.op == "AveragePool" and any(p >= k for p, k in zip(pads, kernel, strict=True)):
            return f"AveragePool pads {pads} would reach its kernel {kernel[:spatial]} (onnxruntime rejects that)"
        reader.attrs["pads"] = pads
        if "auto_pad" in reader.attrs:
            reader.attrs["auto_pad"] = "NOTSET"
        reader.inputs[0] = pad.inputs[0]
        pad.inputs.clear()
        pad.outputs.clear()
        return None
