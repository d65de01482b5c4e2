"""Pass manager: run an ordered list of passes, timing and recording each one.

Each pass gets the graph freshly imported from the previous stage's ModelProto, so
the model handed in is never modified and every stage's model can be kept (the
verifier measures accuracy per pass from these snapshots via `on_stage`). After each
pass the graph is cleaned of dead nodes, topologically sorted and its types
re-inferred.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from converter.errors import PassError
from passes.base import PassContext, PassResult
from passes.model_utils import without_large_weights
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
    """Export a graph, keeping the source model's opsets, IR version and metadata."""
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = like.ir_version
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    model.producer_name, model.producer_version = like.producer_name, like.producer_version
    del model.metadata_props[:]
    model.metadata_props.extend(like.metadata_props)
    return infer_types(model)


def _record(
    spec: PassSpec,
    exact: bool,
    seconds: float,
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    result: PassResult,
) -> PassRecord:
    return PassRecord(
        name=spec.name,
        options=spec.options,
        exact=exact,
        seconds=round(seconds, 4),
        nodes_before=len(before.graph.node),
        nodes_after=len(after.graph.node),
        initializers_before=len(before.graph.initializer),
        initializers_after=len(after.graph.initializer),
        changed=dict(result.changed),
        touched=result.touched[:MAX_NAMES_RECORDED],
        rejected=[{"node": r.node, "reason": r.reason} for r in result.rejected[:MAX_NAMES_RECORDED]],
        notes=list(result.notes),
    )


def run_passes(
    model: onnx.ModelProto,
    specs: list[PassSpec],
    ctx: PassContext,
    on_stage: Callable[[PassRecord, onnx.ModelProto], None] | None = None,
) -> tuple[onnx.ModelProto, list[PassRecord]]:
    """Run `specs` in order on `model`; return the final model and one record per pass."""
    records: list[PassRecord] = []
    current = onnx.ModelProto()
    current.CopyFrom(model)  # the caller's model is never modified
    current = infer_types(current)
    specs = [PassSpec(name, options) for name, options in expand_groups([(s.name, s.options) for s in specs])]
    for spec in specs:
        pass_ = create_pass(spec.name, spec.options)
        previous = current
        ctx.opset = next((o.version for o in current.opset_import if o.domain in ("", "ai.onnx")), ctx.opset)
        start = time.perf_counter()
        try:
            if hasattr(pass_, "run_model"):  # model-level passes (e.g. opset conversion)
                current, result = pass_.run_model(current, ctx)
                current = infer_types(current)
            else:
                graph = gs.import_onnx(current)
                result = pass_.run(graph, ctx)
                graph.cleanup(remove_unused_graph_inputs=False).toposort()
                # A pass that reports no change and left the node count alone handed back the
                # same graph: skip the export and re-inference (most passes on most models).
                if result.changed or len(graph.nodes) != len(current.graph.node):
                    current = graph_to_model(graph, current)
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise PassError(f"pass '{spec.name}' failed: {type(exc).__name__}: {exc}") from exc
        record = _record(spec, pass_.exact, time.perf_counter() - start, previous, current, result)
        records.append(record)
        if on_stage is not None:
            on_stage(record, current)
    return current, records
