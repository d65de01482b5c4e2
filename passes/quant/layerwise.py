"""Calibrated weight-only quantization layer by layer, sequentially (GPTQ's own procedure).

The whole-model path collects every quantized layer's input Hessian (X^T X, K x K) in one
calibration run and holds them all: for a 1.1B Llama that is 88 of them, 7.7 GB. Here the
graph is cut at the quantized layers' inputs (passes/blocks/segmented.split_at, cuts in
graph order: q/k/v's input, attention's context, the MLP's input, its hidden state, ...)
and runs one segment at a time over every calibration batch: the layers reading a cut
get their Hessian from the values there, are quantized, and the next segment runs with
them quantized. So one cut's Hessians exist at a time, and each layer is calibrated on
what the quantized layers before it actually produce, as the GPTQ and AWQ reference
implementations proceed (earlier layers' errors are seen, and partly compensated, by
later ones). The carried state is, per calibration batch, the tensors later segments read
(the residual stream, the mask, the rotary tables). Each segment's session exists only
while it runs.

`quantize_sequentially` drives it; what "quantize these layers with these Hessians" means
stays the quantize pass's (its callback).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from calibration.stats import TensorStats
from converter.core.ort_session import cpu_session, return_freed_memory_promptly
from passes.blocks.segmented import Segment, segment_model, split_at, typed_inputs
from passes.model_utils import export_graph

Feeds = dict[str, np.ndarray]
# (the sites reading one cut, their Hessians by input name) -> {input: 1/s} for inputs whose producer
# now divides by s (AWQ's scales folded into an RMSNorm gamma): the carried values are divided too
QuantizeSites = Callable[[list, dict[str, np.ndarray]], dict[str, np.ndarray]]


def _export(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    graph.toposort()
    return export_graph(graph, like)


def _split(model: onnx.ModelProto, cuts: list[str]) -> dict[int, Segment]:
    return {s.index: s for s in split_at(model.graph, cuts, set())}


def _run(
    model: onnx.ModelProto, segment: Segment, types: dict[str, int], states: list[Feeds], names: list[str]
) -> Iterator[dict[str, np.ndarray]]:
    """The tensors `names` of the segment for each state in turn (one session, dropped after)."""
    if not names:  # (onnxruntime reads no names as "every output")
        yield from ({} for _ in states)
        return
    session = cpu_session(segment_model(model, segment, types, states[0], names), optimize=True)
    for state in states:
        yield dict(zip(names, session.run(names, {n: state[n] for n in segment.inputs}), strict=True))


def quantize_sequentially(
    model: onnx.ModelProto, graph: gs.Graph, sites: list, batches: list[Feeds], quantize: QuantizeSites
) -> list[str]:
    """Quantize `sites` (the pass's WeightSites, nodes of `graph`, which is `model` imported) through
    `quantize`, in graph order, each on the outputs of the ones before; the sites it handed over
    (a site whose node has no name cannot be placed, and is left to the caller)."""
    return_freed_memory_promptly()  # one session per segment, made and dropped in turn
    current = _export(graph, model)
    position = {o: i for i, n in enumerate(current.graph.node) for o in n.output}
    cuts = sorted({site.node.inputs[0].name for site in sites}, key=lambda t: position.get(t, -1))
    segments = _split(current, cuts)
    node_segment = {n.name: s.index for s in segments.values() for n in s.nodes if n.name}
    by_segment: dict[int, list] = {}
    for site in sites:
        if site.node.name in node_segment:
            by_segment.setdefault(node_segment[site.node.name], []).append(site)
    types = {i.name: i.type.tensor_type.elem_type for i in current.graph.input}
    states = [typed_inputs(f, types) for f in batches]
    handed: list[str] = []
    for index in sorted(segments):
        segment = segments[index]
        mine = by_segment.get(index, [])
        if mine:
            # a site's input is a cut (or a graph input), so it reaches this segment in the carried state
            stats = {t: TensorStats(t) for t in dict.fromkeys(site.node.inputs[0].name for site in mine)}
            for state in states:
                for t, stat in stats.items():
                    stat.update(state[t], histogram=False, gram=True)
            folded = quantize(mine, {t: s.gram for t, s in stats.items() if s.gram is not None})
            for t, inv in folded.items():  # the producer ran in an earlier segment: its values here follow it
                for state in states:
                    if t in state:
                        state[t] = (state[t] * inv).astype(state[t].dtype)
            handed += [site.node.name for site in mine]
            del stats
            current = _export(graph, model)  # these layers are quantized now
            segments = _split(current, cuts)
            segment = segments[index]
        later = {t for k, s in segments.items() if k > index for t in s.inputs}
        outs = _run(current, segment, types, states, [o for o in segment.outputs if o in later])
        states = [
            {**{n: v for n, v in state.items() if n in later}, **{n: v for n, v in out.items() if n in later}}
            for state, out in zip(states, outs, strict=True)
        ]
    return handed
