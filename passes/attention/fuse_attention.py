"""Scaled-dot-product attention written out in ops -> one ONNX `Attention` node (opset 23; exact).

Anchored on each Softmax, recognised by what the subgraph computes, in any exporter's order:

    S = MatMul(Q, Kᵀ)                 Q [B, Hq, Sq, d], Kᵀ [B, Hk, d, Skv] (rank 4)
        scalar constants anywhere: Q * c, Kᵀ / c, S * c (the product is `scale`; 1.0
        when the fold passes already absorbed 1/sqrt(d) into Q's weights)
        masks: + M, masked_fill via Where (masks.py), causal or not
    P = Softmax(S, last axis)         optionally Cast(float32) ... Cast(fp16/bf16) around it
        [Where(IsNaN(P), 0, P)]       the SDPA exporters' guard: the op gives zero rows too
    Y = MatMul(P, V)                  V [B, Hk, Skv, dv]

Kᵀ may reach the MatMul through Transposes and scalings in any order. Matching is in
match.py, masks in masks.py, K/V (transpose, GQA) in kv.py (all in passes/attention/);
K and V repeated by repeat_interleave on the head axis (GQA) are passed un-repeated.
The rewrite is Attention(Q, K, V[, attn_mask], scale, is_causal[, softmax_precision=FLOAT
when the graph ran Softmax in fp32 between casts]); with 4-D inputs the op needs no
head counts. Every tensor between the QK MatMul and the PV MatMul must have one reader.

The op exists from opset 23. Below that, with `upgrade_opset` (default) the model is
upgraded (onnx's version converter) only when a candidate was found; without it every
candidate is rejected with the reason. Exact in fp32, except query rows whose keys are
all masked (a sequence that is all padding): the graph gives NaN (-inf masks without
the SDPA guard) or the mean of V (finfo.min masks); the op, in onnxruntime, gives zeros.
Counts: `attention_fused_<variant>`, variant = plain | bert (non-causal mask) | causal |
causal_masked, suffixed `_gqa` when K/V were un-repeated and `_cache` when K is
Concat(past_key input, new keys): a decoder's step with its KV cache.

With a KV cache the concatenation stays outside the op, which takes the whole K/V:
TensorRT 10.14+ and TensorRT-RTX 1.7 parse only a one-output Attention ("TensorRT only
supports Attention nodes with one output"), so the op's past_key/present_key form would
not build, and the present.* outputs are the Concat's outputs as before. The causal mask
of a step after a past is offset (query i sees keys up to past + i), which the op's
is_causal (aligned top-left in opset 23) does not express: it stays the attn_mask.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import onnx
import onnx_graphsurgeon as gs

from converter.core.errors import UnsupportedError
from converter.core.model_io import opset_of
from passes.attention.kv import ShapeFacts, key_from_transposed, key_needs_no_transpose, unrepeat_pair
from passes.attention.masks import MaskBuilder, is_causal
from passes.attention.match import FLOAT, Match, match
from passes.base import Pass, PassContext, PassResult
from passes.fold.upgrade_opset import UpgradeOpset
from passes.graph_utils import FreshNames
from passes.model_utils import graph_to_model, import_graph, infer_types
from passes.pattern_utils import producer

ATTENTION_OPSET = 23


@dataclass
class Plan:
    """What the Attention node will be, decided before anything is changed (also for reports)."""

    variant: str
    is_causal: bool
    key: gs.Tensor | None  # K un-repeated (GQA), or None: K comes from Kᵀ's transposes
    value: gs.Tensor
    groups: int
    sq: object  # symbolic dims of the query and key sequence lengths
    skv: object


def plan(m: Match, facts: ShapeFacts) -> Plan:
    q_dims, kt_dims = facts.dims(m.q), facts.dims(m.kt)
    sq = q_dims[2] if q_dims and len(q_dims) == 4 else None
    skv = kt_dims[3] if kt_dims and len(kt_dims) == 4 else None
    key, value, groups = None, m.v, 1
    if key_needs_no_transpose(m.k_perm):
        key, value, groups = unrepeat_pair(m.k_base, m.v, facts)
        key = key if groups > 1 else None
    causal = [t for t in m.masks if is_causal(t, facts, sq, skv)]
    if len(causal) == len(m.masks):
        variant = "causal" if causal else "plain"
    else:  # TensorRT-RTX cannot take is_causal with an attn_mask: the causal mask joins the others
        variant = "causal_masked" if causal else "bert"
    name = f"{variant}_gqa" if groups > 1 else variant
    if reads_cache(key if key is not None else m.k_base):
        name += "_cache"
    return Plan(name, variant == "causal", key, value, groups, sq, skv)


def reads_cache(key: gs.Tensor) -> bool:
    """Whether K is Concat(past, new) on the sequence axis with the past a graph input: a decode
    step's attention (its causal mask is offset by the past, so it stays an attn_mask)."""
    node = producer(key, "Concat")
    return (
        node is not None
        and node.attrs.get("axis") in (2, -2)
        and not node.inputs[0].inputs
        and not isinstance(node.inputs[0], gs.Constant)
    )


def rewrite(graph: gs.Graph, m: Match, p: Plan, facts: ShapeFacts, unique: FreshNames, softmax_precision: bool) -> None:
    """Replace the block by one Attention node."""
    base = m.softmax.name or "attention"
    key = p.key if p.key is not None else key_from_transposed(graph, m.k_base, m.k_perm, base, unique)
    inputs = [m.q, key, p.value]
    if m.masks and not p.is_causal:
        builder = MaskBuilder(graph, base, unique)
        inputs.append(builder.fit(builder.combine(m.masks), facts, m.q, key, p.sq, p.skv))
    attrs = {"scale": float(m.scale), "is_causal": int(p.is_causal)}
    if m.softmax_fp32 and softmax_precision:
        attrs["softmax_precision"] = FLOAT
    out = m.pv.outputs[0]
    m.pv.outputs.clear()
    graph.nodes.append(gs.Node("Attention", unique(f"{base}_attention"), attrs, inputs, [out]))


def _summary(counts: Counter) -> str:
    return ", ".join(f"{v}={n}" for v, n in sorted(counts.items()))


@dataclass
class FuseAttention(Pass):
    """Decomposed scaled-dot-product attention -> the opset-23 Attention op."""

    name = "fuse-attention"
    level = "model"  # it may upgrade the model's opset first
    exact = True

    upgrade_opset: bool = True
    softmax_precision: bool = True  # False drops it (TensorRT-RTX rejects the attribute): not exact then

    def find(self, graph: gs.Graph, opset: int, facts: ShapeFacts, result: PassResult) -> list[Match]:
        matches, outputs = [], {id(t) for t in graph.outputs}
        for node in graph.nodes:
            if node.op != "Softmax":
                continue
            found = match(node, opset, facts, outputs)
            if isinstance(found, str):
                result.reject(node.name, found)
            else:
                matches.append(found)
        return matches

    def fuse(self, graph: gs.Graph, opset: int) -> PassResult:
        """Fuse every attention block of `graph` (a model at `opset`) in place."""
        result = PassResult()
        facts = ShapeFacts(graph)
        matches = self.find(graph, opset, facts, result)
        if not matches:
            return result
        facts.load()  # one symbolic inference, on the graph as it was
        plans = [plan(m, facts) for m in matches]
        found = Counter(p.variant for p in plans)
        if opset < ATTENTION_OPSET:
            for m in matches:
                result.reject(
                    m.softmax.name,
                    f"attention found but opset {opset} < {ATTENTION_OPSET} has no Attention op: "
                    "run upgrade-opset with target 23 first (or this pass with upgrade_opset)",
                )
            result.notes.append(f"attention blocks found: {len(matches)} ({_summary(found)}), fused: 0")
            return result
        unique = FreshNames(graph)
        for m, p in zip(matches, plans, strict=True):
            rewrite(graph, m, p, facts, unique, self.softmax_precision)
            result.count(f"attention_fused_{p.variant}", m.softmax.name)
        result.notes.append(f"attention blocks found: {len(matches)} ({_summary(found)}), fused: {len(matches)}")
        return result

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        """Upgrade the opset first when there is something to fuse and the model is older than 23."""
        before = opset = opset_of(model) or ctx.opset
        graph = import_graph(model)
        if before < ATTENTION_OPSET and self.upgrade_opset:
            probe = PassResult()
            if not self.find(graph, before, ShapeFacts(graph), probe):
                return model, probe  # nothing to fuse: leave the opset alone
            try:
                model, _ = UpgradeOpset(target=ATTENTION_OPSET).run_model(model, ctx)
            except UnsupportedError as exc:
                probe.reject("<model>", f"attention found but the opset upgrade failed: {exc}")
                return model, probe
            model = infer_types(model)
            graph = import_graph(model)
            opset = ATTENTION_OPSET
        result = self.fuse(graph, opset)
        if opset != before:
            result.opset = opset
            result.count("opset_upgraded", f"{before}->{opset}")
        if result.changed:
            graph.cleanup(remove_unused_graph_inputs=False).toposort()
            model = graph_to_model(graph, model)
        return model, result
