"""Pass manager: run an ordered list of passes, timing and recording each one.

One onnx-graphsurgeon graph carries the model from pass to pass: it is imported once
(lazily: the caller's weights are read, never copied or modified) and exported once at
the end, with every weight written a single time. After each graph pass the graph is
cleaned of dead nodes and topologically sorted, and, when the pass changed anything
that inference could learn from (see `keeps_types` in passes/base.py), its tensor
types are re-inferred on a weight-free view. Exporting and re-importing the
whole model around every pass cost more than the passes themselves on real models.
Model-level passes (`run_model`, e.g. opset conversion) get the graph exported to a
ModelProto; those that declare `reads_weights = False` get it without its large
weights, which are bound back by name afterwards. With `on_stage`, every stage's model
is exported for the caller (the verifier measures accuracy per pass from these).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from converter.core.errors import PassError
from converter.core.model_io import opset_of
from passes.base import PassContext, PassResult
from passes.graph_utils import is_sorted
from passes.model_utils import (
    export_graph,
    import_with_types,
    infer_graph_types,
    large_constant_names,
    restore_weights,
    without_large_weights,
)
from passes.registry import create_pass, expand_groups

MAX_NAMES_RECORDED = 50


@dataclass
class PassSpec:
    """A pass by name with its options, as written in a recipe."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassRecord:
    """What one pass did, for the report."""

    name: str
    options: dict[str, Any]
    exact: bool
    seconds: float
    nodes_before: int
    nodes_after: int
    initializers_before: int
    initializers_after: int
    changed: dict[str, int]
    touched: list[str]
    rejected: list[dict[str, str]]
    notes: list[str]
    accuracy: dict[str, Any] = field(default_factory=dict)  # filled by the caller (verifier)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def infer_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """Refresh value_info by shape/type inference (best effort), without copying the weights."""
    try:
        inferred = onnx.shape_inference.infer_shapes(without_large_weights(model), data_prop=True)
    except Exception:  # inference is best effort: the graph is valid without it
        return model
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    return model


def graph_to_model(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export a graph, keeping the source model's opsets, IR version and metadata, with
    types inferred (for model-level passes that edit a graph of their own)."""
    return infer_types(export_graph(graph, like))


def _initializer_count(graph: gs.Graph) -> int:
    return sum(isinstance(t, gs.Constant) for t in graph.tensors().values())


def _run_model_pass(
    pass_: Any, graph: gs.Graph, like: onnx.ModelProto, ctx: PassContext
) -> tuple[gs.Graph, onnx.ModelProto, PassResult, bool]:
    """Run a model-level pass on the graph; (graph, model it stands for, result, changed).

    A pass that never reads or rewrites weight values (class attribute
    `reads_weights = False`, e.g. the opset converter) runs on a weight-free export,
    and the weights are bound back by name: no copy of them either way.
    """
    light = not getattr(pass_, "reads_weights", True)
    placeholders = large_constant_names(graph) if light else set()
    model_in = export_graph(graph, like, weights=not light)
    model_out, result = pass_.run_model(model_in, ctx)
    if model_out is model_in and not result.changed:  # nothing done: keep the graph as it is
        return graph, like, result, False
    new_graph = import_with_types(model_out)
    if light:
        restore_weights(new_graph, graph, placeholders)
    return new_graph, model_out, result, True


def _record(
    spec: PassSpec,
    exact: bool,
    seconds: float,
    before: tuple[int, int],
    after: tuple[int, int],
    result: PassResult,
) -> PassRecord:
    return PassRecord(
        name=spec.name,
        options=spec.options,
        exact=exact,
        seconds=round(seconds, 4),
        nodes_before=before[0],
        nodes_after=after[0],
        initializers_before=before[1],
        initializers_after=after[1],
        changed=dict(result.changed),
        touched=result.touched[:MAX_NAMES_RECORDED],
        rejected=[{"node": r.node, "reason": r.reason} for r in result.rejected[:MAX_NAMES_RECORDED]],
        notes=list(result.notes),
    )


def _inferred_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return infer_types(copy)


@dataclass
class _Current:
    """The model between passes: a graph, the ModelProto it was imported from (`like`:
    opsets, IR version, metadata), and its export, made only when someone asks."""

    graph: gs.Graph
    like: onnx.ModelProto
    source: onnx.ModelProto  # the caller's model
    edited: bool = False  # some pass changed the graph
    exported: onnx.ModelProto | None = None

    def model(self) -> onnx.ModelProto:
        """The graph as a ModelProto. Until a pass changes something, that is the caller's
        model itself (copied, types inferred), so a run that changes nothing returns the
        same bytes as before it."""
        if self.exported is None:
            self.exported = export_graph(self.graph, self.like) if self.edited else _inferred_copy(self.source)
        return self.exported

    def run(self, pass_: Any, ctx: PassContext) -> tuple[PassResult, bool]:
        """Run one pass on the graph; (its result, whether the graph changed)."""
        if hasattr(pass_, "run_model"):  # model-level passes (e.g. opset conversion)
            self.graph, self.like, result, changed = _run_model_pass(pass_, self.graph, self.like, ctx)
        else:
            nodes = len(self.graph.nodes)
            result = pass_.run(self.graph, ctx)
            # gs's cleanup and toposort cost more than checking whether they are needed
            # (checked on the outer graph only: with subgraphs, always run).
            nested = _has_subgraphs(self.graph)
            if nested or _has_dead_nodes(self.graph):
                self.graph.cleanup(remove_unused_graph_inputs=False)
            changed = bool(result.changed) or len(self.graph.nodes) != nodes
            if changed and (nested or not is_sorted(self.graph)):
                self.graph.toposort()
            if changed and not getattr(pass_, "keeps_types", False):
                infer_graph_types(self.graph, self.like)
        if changed:
            self.edited, self.exported = True, None
        return result, changed


def _has_subgraphs(graph: gs.Graph) -> bool:
    return any(isinstance(v, gs.Graph) for node in graph.nodes for v in node.attrs.values())


def _has_dead_nodes(graph: gs.Graph) -> bool:
    """True when some node's outputs are all unread and none is a graph output.

    A dead chain always ends in such a node, so this finds every graph with dead nodes.
    """
    outputs = {id(t) for t in graph.outputs}
    return any(not any(t.outputs or id(t) in outputs for t in node.outputs) for node in graph.nodes)


def run_passes(
    model: onnx.ModelProto,
    specs: list[PassSpec],
    ctx: PassContext,
    on_stage: Callable[[PassRecord, onnx.ModelProto], None] | None = None,
) -> tuple[onnx.ModelProto, list[PassRecord]]:
    """Run `specs` in order on `model`; return the final model and one record per pass.

    `model` is never modified; the returned model shares no data with it.
    """
    records: list[PassRecord] = []
    specs = [PassSpec(name, options) for name, options in expand_groups([(s.name, s.options) for s in specs])]
    current = _Current(import_with_types(model), like=model, source=model)
    counts = (len(model.graph.node), len(model.graph.initializer))
    for spec in specs:
        pass_ = create_pass(spec.name, spec.options)
        ctx.opset = opset_of(current.like) or ctx.opset
        before, start = counts, time.perf_counter()
        try:
            result, changed = current.run(pass_, ctx)
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise PassError(f"pass '{spec.name}' failed: {type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - start
        if changed:
            counts = (len(current.graph.nodes), _initializer_count(current.graph))
        record = _record(spec, pass_.exact, seconds, before, counts, result)
        records.append(record)
        if on_stage is not None:
            on_stage(record, current.model())
    return current.model(), records
