"""Pass manager: run an ordered list of passes, timing and recording each one.

Every pass of the list is built and validated by the registry before the first one
runs, so a bad name or option fails at once. Each pass then runs by its declared level
(passes/base.py): graph passes on the graph, model passes on a ModelProto. A
TrtforgeError a pass raises reaches the caller as it is; any other exception is a bug
in the pass and becomes PassFailedError naming it. The opset a pass reports
(`PassResult.opset`) becomes `ctx.opset` for the passes after it.

One onnx-graphsurgeon graph carries the model from pass to pass: it is imported once
(lazily: the caller's weights are read, never copied or modified) and exported once at
the end, with every weight written a single time. After each graph pass the graph is
cleaned of dead nodes and topologically sorted, and, when the pass changed anything
that inference could learn from (see `keeps_types` in passes/base.py), its tensor
types are re-inferred on a weight-free view. Exporting and re-importing the
whole model around every pass cost more than the passes themselves on real models.
Model-level passes (`level = "model"`, e.g. opset conversion) get the graph exported to a
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

from converter.core.errors import TrtforgeError
from converter.core.model_io import opset_of
from passes.base import Pass, PassContext, PassFailedError, PassResult
from passes.graph_utils import is_sorted
from passes.model_utils import (
    export_graph,
    import_with_types,
    infer_graph_types,
    infer_types,
    large_constant_names,
    restore_mapped,
    restore_weights,
)
from passes.registry import PassSpec, build_passes

MAX_NAMES_RECORDED = 50


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
    details: dict[str, Any]  # the pass's structured findings (PassResult.details)
    precision: str | None = None  # the float precision the graph computes in after it, when lowered
    accuracy: dict[str, Any] = field(default_factory=dict)  # filled by the caller (verifier)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _initializer_count(graph: gs.Graph) -> int:
    return sum(isinstance(t, gs.Constant) for t in graph.tensors().values())


def _run_model_pass(
    pass_: Pass, graph: gs.Graph, like: onnx.ModelProto, ctx: PassContext
) -> tuple[gs.Graph, onnx.ModelProto, PassResult, bool]:
    """Run a model-level pass on the graph; (graph, model it stands for, result, changed).

    A pass that never reads or rewrites weight values (class attribute
    `reads_weights = False`, e.g. the opset converter) runs on a weight-free export,
    and the weights are bound back by name: no copy of them either way.
    """
    light = not pass_.reads_weights
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
    pass_: Pass,
    seconds: float,
    before: tuple[int, int],
    after: tuple[int, int],
    result: PassResult,
) -> PassRecord:
    return PassRecord(
        name=spec.name,
        options=spec.options,
        exact=pass_.exact,
        precision=pass_.output_precision(),
        seconds=round(seconds, 4),
        nodes_before=before[0],
        nodes_after=after[0],
        initializers_before=before[1],
        initializers_after=after[1],
        changed=dict(result.changed),
        touched=result.touched[:MAX_NAMES_RECORDED],
        rejected=[{"node": r.node, "reason": r.reason} for r in result.rejected[:MAX_NAMES_RECORDED]],
        notes=list(result.notes),
        details=dict(result.details),
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

    def run(self, pass_: Pass, ctx: PassContext) -> tuple[PassResult, bool]:
        """Run one pass on the graph; (its result, whether the graph changed)."""
        if pass_.level == "model":
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
            if changed and not pass_.keeps_types:
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
    on_record: Callable[[PassRecord], None] | None = None,
) -> tuple[onnx.ModelProto, list[PassRecord]]:
    """Run `specs` in order on `model`; return the final model and one record per pass.

    `on_stage` gets each pass's record and the model after it (exported: a copy per pass);
    `on_record` only the record (progress lines: free).

    `model` is never modified; the returned model shares no data with it. Raises
    InvalidInputError for a bad pass name or option before any pass runs.
    """
    passes = build_passes(specs)
    records: list[PassRecord] = []
    current = _Current(import_with_types(model), like=model, source=model)
    counts = (len(model.graph.node), len(model.graph.initializer))
    ctx.opset = opset_of(model) or ctx.opset
    for spec, pass_ in passes:
        before, start = counts, time.perf_counter()
        try:
            result, changed = current.run(pass_, ctx)
        except TrtforgeError:  # raised on purpose: the user's data or an unsupported model
            raise
        except Exception as exc:
            raise PassFailedError(spec.name, exc) from exc
        restore_mapped(current.graph)  # the weights the pass only read go back to their file
        seconds = time.perf_counter() - start
        if result.opset is not None:
            ctx.opset = result.opset
        if changed:
            counts = (len(current.graph.nodes), _initializer_count(current.graph))
        record = _record(spec, pass_, seconds, before, counts, result)
        records.append(record)
        if on_record is not None:
            on_record(record)
        if on_stage is not None:
            on_stage(record, current.model())
    return current.model(), records
