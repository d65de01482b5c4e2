"""Rewiring the residual stream: remove transformer blocks and sub-layers exactly.

Removal is a rewiring of the residual stream found by passes/blocks/discovery.py:
- a removed sub-layer becomes the identity on the residual path: readers of its
  residual Add's output read the Add's stream input instead. In a pre-LN block that is
  `x + f(LN(x))` -> `x`; in a post-LN block `LN(x + f(x))` -> `LN(x)` (the LayerNorm
  is kept, only the sub-layer's contribution goes);
- a removed block is the identity: readers of its output read its input (also in
  post-LN blocks, whose LayerNorms go with it). Removing every sub-layer of a pre-LN
  block is the same as removing the block (and is spelled so); in a post-LN block it
  leaves the LayerNorms (`LN_mlp(LN_attn(x))`), which is not the block's identity;
- the nodes and weights that nothing reads any more are deleted from the file;
- a decoder exported with its KV cache loses the cache inputs/outputs of every removed
  attention, and its remaining cache layers are renumbered (passes/blocks/cache_io.py).

`gated_model` builds the scoring twin of the graph: every unit's rewiring behind a
boolean input (`Where(keep, output, input)`), so one onnxruntime session evaluates any
removal set exactly as the rewired graph computes it (passes/blocks/scores.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx
from onnx import TensorProto, helper

from converter.core.metadata import DROPPED_BLOCKS, read_metadata, write_metadata
from passes.blocks.cache_io import prune_cache
from passes.blocks.discovery import BlockGraph, Unit
from passes.blocks.liveness import keep_live

GATE_PREFIX = "trtforge_keep_"


def plan(bg: BlockGraph, names: Iterable[str]) -> list[Unit]:
    """The units to rewire for a removal set, in stream order (a pre-LN block whose sub-layers all go: the block)."""
    names = set(names)
    by_name = {u.name: u for u in bg.units("all")}
    unknown = sorted(names - set(by_name))
    if unknown:
        raise ValueError(f"unknown block/sub-layer name(s) {unknown} (known: {', '.join(by_name)})")
    chosen = []
    for b in bg.blocks:
        subs = [s.name for s in b.sublayers]
        if b.name in names or (b.norm == "pre-LN" and all(s in names for s in subs)):
            chosen.append(by_name[b.name])
        else:
            chosen += [by_name[s] for s in subs if s in names]
    return chosen


def canonical(bg: BlockGraph, names: Iterable[str]) -> list[str]:
    """Removal set spelled as plan() applies it (a block name replaces a pre-LN block's complete sub-layer set)."""
    return [u.name for u in plan(bg, names)]


def substitutions(units: list[Unit]) -> dict[str, str]:
    """replaced tensor -> the tensor its readers read after removal (chains resolved)."""
    subst: dict[str, str] = {}
    for u in units:
        source = u.input
        while source in subst:
            source = subst[source]
        subst[u.replaced] = source
    return subst


def remove_units(model: onnx.ModelProto, bg: BlockGraph, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of `model` with the named blocks/sub-layers rewired out and dead nodes/weights deleted."""
    units = plan(bg, names)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not units:
        return out
    graph = out.graph
    subst = substitutions(units)
    for node in graph.node:
        for i, t in enumerate(node.input):
            if t in subst:
                node.input[i] = subst[t]
    extra = []
    for o in graph.output:  # a replaced graph output keeps its name through an Identity
        if o.name in subst:
            for node in graph.node:
                node.output[:] = [f"{x}__dropped" if x == o.name else x for x in node.output]
            extra.append(helper.make_node("Identity", [subst[o.name]], [o.name], name=f"{o.name}__kept"))
    graph.node.extend(extra)
    keep_live(graph)
    prune_cache(out)  # a decoder's cache I/O of removed attention goes too (cache_io.py)
    entries = read_metadata(out)
    previous = [x for x in entries.get(DROPPED_BLOCKS, "").split(",") if x]
    write_metadata(out, {DROPPED_BLOCKS: ",".join(previous + [u.name for u in units])})
    return out


def gated_model(model: onnx.ModelProto, units: list[Unit], expose: Iterable[str] = ()) -> onnx.ModelProto:
    """`model` with one boolean input per unit (GATE_PREFIX + name; false = removed) and `expose`d tensors as outputs.

    Sub-layer gates are applied before block gates, so a pre-LN block whose last
    sub-layer output is also the block output gets nested gates, as removal nests them.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes = list(graph.node)
    ordered = [u for u in units if u.kind != "block"] + [u for u in units if u.kind == "block"]
    for u in ordered:
        where = next(i for i, n in enumerate(nodes) if u.replaced in n.output)
        raw = f"{u.replaced}__ungated_{u.name}"
        nodes[where].output[:] = [raw if x == u.replaced else x for x in nodes[where].output]
        gate = GATE_PREFIX + u.name
        graph.input.append(helper.make_tensor_value_info(gate, TensorProto.BOOL, []))
        nodes.insert(where + 1, helper.make_node("Where", [gate, raw, u.input], [u.replaced], name=f"gate_{u.name}"))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # stale for the renamed tensors; onnxruntime infers its own
    present = {o.name for o in graph.output}
    for name in dict.fromkeys(expose):
        if name not in present:
            graph.output.append(onnx.ValueInfoProto(name=name))
    return out
