"""Run a block graph one segment at a time: onnxruntime holds a few blocks' weights, not the model's.

Why: onnxruntime's CPU provider has no fp16 MatMul, so a session of an fp16 LLM converts
every weight to fp32 when it starts (2x the stored bytes, on top of the mapped file: a
1.1B-parameter model's 2.2 GB cost 4.4 GB). Cut at the residual stream after every block,
each segment is a small model: its nodes, the weights they read, and as inputs the
tensors earlier segments computed (the stream, and side tensors such as the mask or the
rotary tables, which the first segment computes and later ones read). A segment's session
is created when it first runs and kept while the kept sessions' weights (as onnxruntime
holds them: fp16 as fp32) fit `budget_bytes`. A small model keeps every session (a run is
a few `run` calls instead of one); a large one keeps its first blocks' sessions and
creates the others again each time they run (one at a time).

Many (batch, removal set) pairs advance together (`run_many`): the wavefront goes segment
by segment, so each segment's session is created once per wavefront, not once per set,
and pairs that agree on the gates of every segment so far share one computation (removing
block 9 runs blocks 0-8 once, with the reference). Only the tensors later segments read
are carried between segments; final outputs are handed out as soon as the last segment
makes them, so a wavefront of many sets never holds many logits at once.

The results are the ones the whole graph gives: the same nodes and weights, split at
tensors both sides read as they are (onnxruntime's fusions stop at a segment's edge,
so values may differ in the last float bits).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from converter.core.model_checks import tensor_nbytes
from converter.core.ort_session import cpu_session, return_freed_memory_promptly
from passes.blocks.liveness import node_inputs

Feeds = dict[str, np.ndarray]
Gates = Mapping[str, bool]

DEFAULT_BUDGET_BYTES = 512 << 20  # sessions' weights kept at least this much (a small model: all of them)
STATE_BUDGET_BYTES = 256 << 20  # carried tensors of one wavefront (batches x removal sets), at most
_LOW_PRECISION = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}  # onnxruntime's CPU MatMul needs fp32


@dataclass
class Segment:
    """A run of the graph's nodes between two cuts, and what crosses the cuts."""

    index: int
    nodes: list[onnx.NodeProto]
    weights: list[str]  # initializers its nodes read
    inputs: list[str]  # graph inputs and earlier segments' tensors its nodes read
    outputs: list[str] = field(default_factory=list)  # tensors later segments, or callers, read
    gates: list[str] = field(default_factory=list)  # the boolean gate inputs among `inputs`
    held_bytes: int = 0  # its weights as onnxruntime's session holds them


def split_at(graph: onnx.GraphProto, cuts: list[str], gate_inputs: set[str]) -> list[Segment]:
    """Segments of `graph`: segment k holds the nodes `cuts[k]` needs that no earlier cut needs;
    the last holds the rest. A node needed by cut k only needs nodes of segments up to k, so the
    segments run in order."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    owner: dict[int, int] = {}
    for k, cut in enumerate(cuts):
        stack = [cut]
        while stack:
            i = producer.get(stack.pop())
            if i is not None and i not in owner:
                owner[i] = k
                stack += node_inputs(graph.node[i])
    tail = len(cuts)
    weights = {t.name: t for t in graph.initializer}
    segments = []
    for k in range(tail + 1):
        nodes = [n for i, n in enumerate(graph.node) if owner.get(i, tail) == k]
        made = {o for n in nodes for o in n.output if o}
        read = list(dict.fromkeys(t for n in nodes for t in node_inputs(n)))
        used = [t for t in read if t in weights and t not in made]
        segment = Segment(k, nodes, used, [t for t in read if t not in made and t not in weights])
        segment.gates = [t for t in segment.inputs if t in gate_inputs]
        segment.held_bytes = sum(_held_bytes(weights[t]) for t in used)
        segments.append(segment)
    final = {o.name for o in graph.output}
    for k, segment in enumerate(segments):
        later = {t for s in segments[k + 1 :] for t in s.inputs}
        segment.outputs = [o for n in segment.nodes for o in n.output if o and (o in later or o in final)]
    return [s for s in segments if s.nodes]


def segment_model(
    model: onnx.ModelProto,
    segment: Segment,
    input_types: dict[str, int],
    state: Mapping[str, np.ndarray],
    extra_outputs: Iterable[str] = (),
) -> onnx.ModelProto:
    """A model of `model`'s segment alone: its inputs typed by `input_types` (the graph's, filled in
    from the values of `state` that reach them), its outputs and `extra_outputs`."""
    for name in segment.inputs:
        if name not in input_types:
            input_types[name] = helper.np_dtype_to_tensor_dtype(state[name].dtype)
    inputs = [helper.make_tensor_value_info(n, input_types[n], None) for n in segment.inputs]
    outputs = [onnx.ValueInfoProto(name=n) for n in dict.fromkeys([*segment.outputs, *extra_outputs])]
    wanted = set(segment.weights)
    weights = [t for t in model.graph.initializer if t.name in wanted]
    graph = helper.make_graph(segment.nodes, f"segment{segment.index}", inputs, outputs, weights)
    out = helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    out.functions.extend(model.functions)
    return out


def typed_inputs(feeds: Feeds, types: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The feeds of the inputs `types` names, in the types declared there (int64 token ids given as
    int32, say)."""
    return {n: np.asarray(feeds[n]).astype(helper.tensor_dtype_to_np_dtype(t), copy=False) for n, t in types.items()}


def _held_bytes(tensor: onnx.TensorProto) -> int:
    size = tensor_nbytes(tensor) or 0
    return 2 * size if tensor.data_type in _LOW_PRECISION else size


def _nbytes(state: Mapping[str, np.ndarray]) -> int:
    return sum(v.nbytes for v in state.values())


class SegmentedSession:
    """`model` run segment by segment (cut after each tensor of `cuts`), with onnxruntime sessions
    created as segments run, the first ones kept while their weights fit `budget_bytes`."""

    def __init__(
        self,
        model: onnx.ModelProto,
        cuts: list[str],
        gate_inputs: Iterable[str] = (),
        budget_bytes: int | None = None,
    ):
        """`budget_bytes`: weights the kept sessions may hold (default: a quarter of the model's as
        onnxruntime holds them, at least DEFAULT_BUDGET_BYTES); 0 keeps none."""
        return_freed_memory_promptly()  # a dropped session's weights leave the resident set
        self.model = model
        self.segments = split_at(model.graph, cuts, set(gate_inputs))
        total = sum(s.held_bytes for s in self.segments)
        self.budget = budget_bytes if budget_bytes is not None else max(DEFAULT_BUDGET_BYTES, total // 4)
        self.outputs = [o.name for o in model.graph.output]
        self.inputs = [i.name for i in model.graph.input if i.name not in set(gate_inputs)]
        self.input_types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
        self.sessions: dict[int, object] = {}
        self.kept_bytes = 0
        self.created = 0  # sessions created so far (each costs its segment's weights once more)
        self.segment_runs = 0  # onnxruntime runs of one segment (shared prefixes run once)
        self.state_bytes = 0  # largest carried state of one batch seen so far

    def close(self) -> None:
        """Drop every session (their weights)."""
        self.sessions.clear()
        self.kept_bytes = 0

    def _session(self, segment: Segment, state: Mapping[str, np.ndarray]):
        """The segment's session: a kept one, else a new one, kept if it fits the budget. Nothing is
        evicted: segments run in the same order every wavefront, and least-recently-used eviction
        of such a cycle would drop each session just before it is needed again."""
        if segment.index in self.sessions:
            return self.sessions[segment.index]
        session = cpu_session(self._segment_model(segment, state), optimize=True)
        self.created += 1
        if self.kept_bytes + segment.held_bytes <= self.budget:
            self.sessions[segment.index] = session
            self.kept_bytes += segment.held_bytes
        return session

    def _segment_model(self, segment: Segment, state: Mapping[str, np.ndarray]) -> onnx.ModelProto:
        return segment_model(self.model, segment, self.input_types, state)

    def run(self, feeds: Feeds, gates: Gates | None = None, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """One batch with one gate setting."""
        return next(out for _, _, out in self.run_many([feeds], [dict(gates or {})], outputs))

    def run_many(
        self, batches: list[Feeds], gate_sets: list[Gates], outputs: list[str] | None = None
    ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """(batch index, gate-set index, outputs) for every pair, as the last segment makes them;
        in chunks of gate sets whose carried tensors fit STATE_BUDGET_BYTES."""
        names = outputs or self.outputs
        per_set = max(self.state_bytes, 1) * max(len(batches), 1)
        step = max(1, STATE_BUDGET_BYTES // per_set)
        for start in range(0, len(gate_sets), step):
            chunk = gate_sets[start : start + step]
            for b, i, out in self._wavefront(batches, chunk, names):
                yield b, start + i, out

    def _wavefront(
        self, batches: list[Feeds], gate_sets: list[Gates], names: list[str]
    ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        key_of = {(b, i): (b,) for b in range(len(batches)) for i in range(len(gate_sets))}
        states: dict[tuple, dict[str, np.ndarray]] = {(b,): self._inputs(f) for b, f in enumerate(batches)}
        wanted = set(names)
        for k, segment in enumerate(self.segments):
            session = None  # the last segment's session goes before this one's is made
            last = k == len(self.segments) - 1
            keep = wanted | {t for s in self.segments[k + 1 :] for t in s.inputs}
            members: dict[tuple, list[tuple[int, int]]] = {}
            for pair, key in key_of.items():
                gates = tuple(bool(gate_sets[pair[1]].get(g, True)) for g in segment.gates)
                members.setdefault((*key, gates), []).append(pair)
            session = self._session(segment, next(iter(states.values()))) if segment.outputs else None
            fetch = [o for o in segment.outputs if o in keep]
            produced: dict[tuple, dict[str, np.ndarray]] = {}
            for new_key, pairs in members.items():
                state = states[key_of[pairs[0]]]
                feed = {n: state[n] for n in segment.inputs if n not in segment.gates}
                feed.update({g: np.array(v) for g, v in zip(segment.gates, new_key[-1], strict=True)})
                out = {n: v for n, v in state.items() if n in keep}
                if fetch and session is not None:  # (onnxruntime reads no names as "every output")
                    out.update(zip(fetch, session.run(fetch, feed), strict=True))
                    self.segment_runs += 1
                self.state_bytes = max(self.state_bytes, _nbytes(out))
                if last:
                    for b, i in pairs:
                        yield b, i, {n: out[n] for n in names}
                else:
                    produced[new_key] = out
                for pair in pairs:
                    key_of[pair] = new_key
            states = produced

    def _inputs(self, feeds: Feeds) -> dict[str, np.ndarray]:
        return typed_inputs(feeds, {n: self.input_types[n] for n in self.inputs})
