"""The pass fuzzer's minimiser (scripts/fuzz_passes.py): delta-debugging a failing model down to
fewer nodes while the same class of failure persists for the same pass."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable

import numpy as np
import onnx

from scripts.fuzz_graphs import BATCH_DIM, BATCHES
from scripts.fuzz_judge import CRASH, INVALID, Reference, UnusableModel, Verdict, feeds_for, session

# --------------------------------------------------------------------------------------
# Minimising a failure
# --------------------------------------------------------------------------------------

TypeInfo = tuple[int, tuple[int, ...]]  # (elem_type, dims) at the first feed


def concrete_types(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, TypeInfo]:
    """Element type and dims of every tensor at `feeds`: initializers, inputs, and every node
    output (the model rerun with them all as outputs)."""
    types: dict[str, TypeInfo] = {t.name: (t.data_type, tuple(t.dims)) for t in model.graph.initializer}
    for name, array in feeds.items():
        types[name] = (onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)
    inferred = onnx.shape_inference.infer_shapes(model)
    elems = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    names = [o for n in model.graph.node for o in n.output if o and elems.get(o)]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(o, elems[o], None) for o in names)
    with contextlib.suppress(Exception):  # best effort: untyped tensors cannot become inputs
        for name, array in zip(names, session(probe).run(None, feeds), strict=True):
            types[name] = (elems[name], tuple(np.shape(array)))
    return types


def _input_info(name: str, info: TypeInfo, dynamic: bool) -> onnx.ValueInfoProto:
    """A graph input of the tensor's type; its first dim symbolic when the model's batch is."""
    dims: list[int | str] = list(info[1])
    if dynamic and dims and dims[0] == BATCHES[0]:
        dims[0] = BATCH_DIM
    return onnx.helper.make_tensor_value_info(name, info[0], dims)


def _is_dynamic(model: onnx.ModelProto) -> bool:
    return any(d.HasField("dim_param") for i in model.graph.input for d in i.type.tensor_type.shape.dim)


def remove_nodes(model: onnx.ModelProto, drop: set[int], types: dict[str, TypeInfo]) -> onnx.ModelProto | None:
    """`model` without the nodes at positions `drop`, or None when that leaves nothing to run.

    A removed node's output is read, from then on, as one of its inputs of the same type and
    dims; when it has none, the output becomes a graph input, and a graph output it was moves
    to the node's data input. Graph outputs follow their tensor (dropped when it became a
    graph input or constant); dead nodes and unused initializers and inputs go.
    """
    graph, rename, added = model.graph, {}, []
    fed_by: dict[str, str] = {}  # a graph output that became an input -> the removed node's data input

    def resolve(name: str) -> str:
        while name in rename:
            name = rename[name]
        return name

    for index in sorted(drop):
        node = graph.node[index]
        for out in (o for o in node.output if o):
            if out not in types:
                return None
            same = [resolve(i) for i in node.input if i and types.get(resolve(i)) == types[out]]
            if same:
                rename[out] = same[0]
            else:
                added.append(out)
                if node.input and node.input[0]:
                    fed_by[out] = resolve(node.input[0])
    kept = [n for i, n in enumerate(graph.node) if i not in drop]
    result = onnx.ModelProto()
    result.CopyFrom(model)
    g = result.graph
    del g.node[:], g.value_info[:], g.output[:]
    for node in kept:
        copy = g.node.add()
        copy.CopyFrom(node)
        copy.input[:] = [resolve(i) if i else i for i in node.input]
    sources = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | set(added)
    unchanged = {o.name for o in model.graph.output if resolve(o.name) == o.name}
    for out in model.graph.output:
        name = resolve(out.name)
        while name in fed_by and name not in unchanged:  # the output moves up to what its node read
            name = fed_by[name]
        if name in sources:
            continue  # the output is now a graph input or a constant: nothing computes it
        if name == out.name:
            g.output.append(out)
        elif name not in unchanged and name in types and all(o.name != name for o in g.output):
            elem, dims = types[name][0], [None] * len(types[name][1])  # rank only: inference fills in the rest
            g.output.append(onnx.helper.make_tensor_value_info(name, elem, dims))
    dynamic = _is_dynamic(model)
    g.input.extend(_input_info(name, types[name], dynamic) for name in added)
    return _without_dead_code(result)


def _without_dead_code(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """Drop nodes no output depends on, then unused initializers and inputs; None if no node is left."""
    g = model.graph
    needed = {o.name for o in g.output}
    live = []
    for node in reversed(g.node):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(i for i in node.input if i)
    if not live or not g.output:
        return None
    nodes = list(reversed(live))
    del g.node[:]
    g.node.extend(nodes)
    initializers = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(initializers)
    outputs = {o.name for o in g.output}
    inputs = [i for i in g.input if i.name in needed or i.name in outputs]
    del g.input[:]
    g.input.extend(inputs)
    return model


def _without_output(model: onnx.ModelProto, index: int) -> onnx.ModelProto | None:
    candidate = onnx.ModelProto()
    candidate.CopyFrom(model)
    del candidate.graph.output[index]
    return _without_dead_code(candidate) if candidate.graph.output else None


def minimise(model: onnx.ModelProto, still_fails: Callable[[onnx.ModelProto], bool], seconds: float) -> onnx.ModelProto:
    """A smaller model on which `still_fails` holds: graph outputs, then chunks of nodes (halved
    down to single nodes) removed greedily while it keeps failing, until `seconds` are spent."""
    deadline = time.monotonic() + seconds
    current = model
    for index in reversed(range(len(current.graph.output))):
        candidate = _without_output(current, index) if len(current.graph.output) > 1 else None
        if candidate is not None and still_fails(candidate):
            current = candidate
    types = concrete_types(current, feeds_for(current)[0])
    chunk = max(1, len(current.graph.node) // 2)
    while time.monotonic() < deadline:
        shrunk, start = False, 0
        while start < len(current.graph.node) and time.monotonic() < deadline:
            drop = set(range(start, min(start + chunk, len(current.graph.node))))
            candidate = remove_nodes(current, drop, types)
            if candidate is not None and still_fails(candidate):
                current, shrunk = candidate, True
                types = concrete_types(current, feeds_for(current)[0])
            else:
                start += chunk
        if not shrunk:
            if chunk == 1:
                break
            chunk = max(1, chunk // 2)
    return current


def signature(verdict: Verdict) -> tuple[str, str]:
    """What a minimised failure must keep: its class, and for a crash the exception type, for an
    invalid model the stage and kind of error (names and numbers left out): a reproducer of one
    bug must not slide into another."""
    if verdict.kind == CRASH:
        return verdict.kind, verdict.message.split(":", 1)[0]
    if verdict.kind == INVALID:
        return verdict.kind, " ".join(re.sub(r"'[^']*'|\(.*?\)|\d+", "", verdict.message).split())[:80]
    return verdict.kind, ""


def fails_the_same(pass_name: str, verdict: Verdict, seconds: float | None) -> Callable[[onnx.ModelProto], bool]:
    """The minimiser's test: a valid model on which the pass fails with the same signature."""
    wanted = signature(verdict)

    def check(candidate: onnx.ModelProto) -> bool:
        try:
            again = Reference.of(candidate).judge(pass_name, seconds)
        except UnusableModel:
            return False
        return signature(again) == wanted

    return check
