"""Where does error enter? Layer-by-layer comparison of a candidate graph with its reference.

Both graphs run on the same real samples with their intermediate tensors marked as
outputs (onnxruntime CPU). Only tensors present in BOTH graphs under the same name
are compared: those are the ones that survived the passes (a fused subgraph's inner
tensors no longer exist, and marking them would defeat the fusion being debugged).
trtforge's passes keep the name of every tensor they do not remove, so names are the
mapping back to the reference.

A tensor diverges when it fails the tolerances (|c - r| <= atol + rtol*|r| and
cosine >= min_cosine). A divergent tensor whose compared ancestors all agree is an
*origin*: the error entered in the nodes between them. Origins are listed first, in
graph order. For each origin fed by a QuantizeLinear/DequantizeLinear pair, the pair
is removed (the layer runs in high precision) and the gain in final-output cosine
is measured: that names the Q/DQ pair responsible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from converter.core.model_io import weights_nbytes
from converter.verification.compare import Feeds, OnnxRunner, collect
from converter.verification.tolerances import Tolerances
from passes.model_utils import infer_types

MAX_TENSORS = 3000
MAX_ORIGINS_TRIED_FOR_QDQ = 3
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}


@dataclass
class LayerError:
    index: int  # position of the producing node in the candidate's graph order
    tensor: str
    node: str
    op: str
    max_abs: float
    rel: float  # max-abs over the reference's max magnitude
    cosine: float
    divergent: bool
    origin: bool = False


@dataclass
class Localization:
    compared: int
    skipped_reason: str = ""
    layers: list[LayerError] = field(default_factory=list)
    qdq_attribution: list[dict[str, Any]] = field(default_factory=list)

    @property
    def divergent_layers(self) -> list[LayerError]:
        """Divergent tensors, origins first, each group in graph order."""
        bad = [layer for layer in self.layers if layer.divergent]
        return sorted(bad, key=lambda layer: (not layer.origin, layer.index))

    def to_dict(self, limit: int = 20) -> dict[str, Any]:
        return {
            "compared_tensors": self.compared,
            "skipped": self.skipped_reason,
            "divergent_layers": [asdict(layer) for layer in self.divergent_layers[:limit]],
            "error_curve": [
                {"index": layer.index, "tensor": layer.tensor, "rel": layer.rel, "cosine": layer.cosine}
                for layer in self.layers
            ],
            "qdq_attribution": self.qdq_attribution,
        }


def _float_tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    typed = {}
    for info in [*model.graph.value_info, *model.graph.output]:
        elem = info.type.tensor_type.elem_type
        if elem in _FLOAT_TYPES:
            typed[info.name] = elem
    return typed


def with_outputs(model: onnx.ModelProto, names: list[str], types: dict[str, int]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the tensors `names`."""
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    existing = {o.name for o in extended.graph.output}
    for name in names:
        if name not in existing:
            extended.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
    return extended


def _layer_error(index, tensor, node, ref: np.ndarray, cand: np.ndarray, tol: Tolerances) -> LayerError:
    if ref.shape != cand.shape:
        return LayerError(index, tensor, node.name, node.op_type, float("inf"), float("inf"), 0.0, True)
    r, c = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    # Equal values (the -inf of a causal mask in both graphs included) differ by 0, not NaN;
    # the metrics then read the positions where both are finite.
    same = (r == c) | (np.isnan(r) & np.isnan(c))
    finite = bool(np.all(same | (np.isfinite(r) & np.isfinite(c))))
    keep = np.isfinite(r) & np.isfinite(c)
    r, c = r[keep], c[keep]
    diff = np.abs(c - r)
    scale = float(np.max(np.abs(r))) if r.size else 0.0
    norms = float(np.linalg.norm(r) * np.linalg.norm(c)) if finite else 0.0
    cosine = float(np.dot(r, c) / norms) if norms > 0 else float(np.array_equal(r, c))
    max_abs = float(diff.max()) if diff.size and finite else float("inf")
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    within = finite and bool(np.all(diff <= tol.atol + tol.rtol * np.abs(r)))
    return LayerError(
        index, tensor, node.name, node.op_type, max_abs, rel, cosine, not within or cosine < tol.min_cosine
    )


def _ancestors_compared(model: onnx.ModelProto, compared: set[str]) -> dict[str, set[str]]:
    """For each compared tensor, the nearest compared tensors upstream of it."""
    producer = {out: node for node in model.graph.node for out in node.output}
    nearest: dict[str, set[str]] = {}

    def upstream(tensor: str, seen: set[str]) -> set[str]:
        node = producer.get(tensor)
        found: set[str] = set()
        if node is None:
            return found
        for name in node.input:
            if not name or name in seen:
                continue
            seen.add(name)
            found |= {name} if name in compared else upstream(name, seen)
        return found

    for name in compared:
        nearest[name] = upstream(name, set())
    return nearest


def localize(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    feeds_list: list[Feeds],
    tol: Tolerances,
    attribute_qdq: bool = True,
) -> Localization:
    """Compare every shared intermediate tensor of `candidate` with `reference`."""
    if weights_nbytes(reference) + weights_nbytes(candidate) > 1_500_000_000:
        return Localization(0, "models too large to run with extra outputs in one process")
    ref_model, cand_model = infer_types(_copy(reference)), infer_types(_copy(candidate))
    ref_types, cand_types = _float_tensor_types(ref_model), _float_tensor_types(cand_model)
    graph_inputs = {i.name for i in cand_model.graph.input}
    order = [(i, node, out) for i, node in enumerate(cand_model.graph.node) for out in node.output]
    shared = [
        (i, node, out) for i, node, out in order if out in ref_types and out in cand_types and out not in graph_inputs
    ][:MAX_TENSORS]
    if not shared:
        return Localization(0, "no intermediate tensor names in common")
    names = [out for _, _, out in shared]
    ref_out = collect(OnnxRunner(with_outputs(ref_model, names, ref_types), "reference+intermediates"), feeds_list)
    cand_out = collect(OnnxRunner(with_outputs(cand_model, names, cand_types), "candidate+intermediates"), feeds_list)
    layers = [_layer_error(i, out, node, ref_out[out], cand_out[out], tol) for i, node, out in shared]
    by_name = {layer.tensor: layer for layer in layers}
    upstream = _ancestors_compared(cand_model, set(by_name))
    for layer in layers:
        if layer.divergent:
            layer.origin = not any(by_name[a].divergent for a in upstream[layer.tensor])
    result = Localization(len(layers), layers=layers)
    if attribute_qdq:
        result.qdq_attribution = _attribute_qdq(cand_model, result, ref_out, feeds_list)
    return result


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _qdq_feeding(model: onnx.ModelProto, node_name: str) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(QuantizeLinear, DequantizeLinear) pairs whose DQ output feeds the named node."""
    producer = {out: node for node in model.graph.node for out in node.output}
    node = next((n for n in model.graph.node if n.name == node_name), None)
    pairs = []
    for name in node.input if node is not None else []:
        dq = producer.get(name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            pairs.append((q, dq))
    return pairs


def without_qdq(model: onnx.ModelProto, q: onnx.NodeProto, dq: onnx.NodeProto) -> onnx.ModelProto:
    """`model` with the Q/DQ pair removed: DQ's readers read Q's float input instead."""
    out = _copy(model)
    source, target = q.input[0], dq.output[0]
    kept = [n for n in out.graph.node if n.name not in (q.name, dq.name) or not n.name]
    del out.graph.node[:]
    for node in kept:
        node.input[:] = [source if i == target else i for i in node.input]
        out.graph.node.append(node)
    return out


def _final_cosine(ref_out: dict[str, np.ndarray], cand_out: dict[str, np.ndarray], names: list[str]) -> float:
    values = []
    for name in names:
        r, c = ref_out[name].astype(np.float64).ravel(), cand_out[name].astype(np.float64).ravel()
        norms = np.linalg.norm(r) * np.linalg.norm(c)
        values.append(float(np.dot(r, c) / norms) if norms > 0 else 1.0)
    return min(values) if values else 1.0


def _attribute_qdq(model, result: Localization, ref_out, feeds_list) -> list[dict[str, Any]]:
    """Re-run with each suspicious Q/DQ pair removed; report the final-output gain."""
    outputs = [o.name for o in model.graph.output]
    suspects = [
        (layer, pair)
        for layer in [lay for lay in result.divergent_layers if lay.origin][:MAX_ORIGINS_TRIED_FOR_QDQ]
        for pair in _qdq_feeding(model, layer.node)
    ]
    if not suspects:
        return []
    before = _final_cosine(ref_out, collect(OnnxRunner(model, "candidate"), feeds_list), outputs)
    findings = []
    for layer, (q, dq) in suspects:
        fixed = collect(OnnxRunner(without_qdq(model, q, dq), "candidate-without-qdq"), feeds_list)
        after = _final_cosine(ref_out, fixed, outputs)
        findings.append(
            {
                "layer": layer.node,
                "quantize": q.name,
                "dequantize": dq.name,
                "final_cosine_before": before,
                "final_cosine_without_pair": after,
                "gain": after - before,
            }
        )
    return sorted(findings, key=lambda f: -f["gain"])
