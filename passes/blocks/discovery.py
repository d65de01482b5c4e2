"""Find the repeated transformer blocks of an ONNX graph: residual stream, blocks, sub-layers.

Matched on what the graph computes, not on node names or one exporter's node order:

- a *residual sub-layer* is an `Add(s, f(s))` whose one input `s` (the residual
  stream) is an ancestor of the other, and whose branch `f` (the nodes on paths from
  `s` to the other input) multiplies by learned weights (a MatMul/Gemm with a
  constant operand, or a fused attention op);
- it is *attention* when its branch holds a Softmax or an attention op, *mlp* when it
  holds no attention but two or more weighted MatMul/Gemm, else *other*;
- consecutive sub-layers form a *chain* when the stream leaving one is the stream
  entering the next: directly (pre-LN: `x + f(LN(x))`), or through a weight-free
  region such as a LayerNorm (post-LN: `LN(x + f(x))`, the region is the sub-layer's
  `post_norm` and its output the stream tensor); the last sub-layer of a post-LN chain
  gets the region that repeats the earlier ones' op types;
- a *block* starts at an attention sub-layer and runs up to and including the next mlp.

Everything is addressed by tensor names, so the same result drives scoring (read the
stream tensors), gating (switch sub-layers off) and removal (passes/blocks/rewiring.py).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import onnx

ATTENTION_OPS = {"Softmax", "Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention"}
WEIGHTED_OPS = {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "MatMulNBits", "FusedMatMul"}


@dataclass
class SubLayer:
    """One residual sub-layer; removing it makes it the identity on the residual path."""

    name: str  # "attn3", "mlp3" (a second attention in a block: "attn3_2")
    kind: str  # "attention" | "mlp" | "other"
    block: int
    input: str  # stream tensor entering (the Add's skip input)
    add_output: str  # the residual Add's output (removal: its readers read `input`)
    output: str  # stream tensor leaving (after `post_norm` in post-LN blocks)
    add_node: str
    branch_nodes: list[str] = field(default_factory=list)
    post_norm: list[str] = field(default_factory=list)  # node names of the LayerNorm region (post-LN)


@dataclass
class Block:
    index: int
    name: str  # "block3"
    input: str
    output: str
    sublayers: list[SubLayer]
    norm: str  # "pre-LN" | "post-LN"

    @property
    def kinds(self) -> list[str]:
        return [s.kind for s in self.sublayers]


@dataclass
class Unit:
    """Something that can be removed: a whole block or one sub-layer."""

    name: str
    kind: str  # "block" | "attention" | "mlp" | "other"
    block: int
    input: str  # what readers of `replaced` read instead after removal
    replaced: str  # block: its output; sub-layer: its residual Add's output
    output: str  # stream tensor after the unit (for Block Influence)


@dataclass
class BlockGraph:
    blocks: list[Block]
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (node, reason)
    notes: list[str] = field(default_factory=list)
    message: str = ""

    @property
    def found(self) -> bool:
        return bool(self.blocks)

    @property
    def layout(self) -> str:
        kinds = {b.norm for b in self.blocks}
        return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "none")

    def units(self, granularity: str = "all") -> list[Unit]:
        """Removable units: "block", "sublayer", "attention", "mlp" or "all" (blocks, then sub-layers)."""
        out = []
        if granularity in ("block", "all"):
            out += [Unit(b.name, "block", b.index, b.input, b.output, b.output) for b in self.blocks]
        for b in self.blocks:
            for s in b.sublayers:
                if granularity in ("sublayer", "all") or granularity == s.kind:
                    out.append(Unit(s.name, s.kind, b.index, s.input, s.add_output, s.output))
        return out

    def summary(self) -> list[dict]:
        return [
            {
                "block": b.name,
                "norm": b.norm,
                "input": b.input,
                "output": b.output,
                "sublayers": [
                    {"name": s.name, "kind": s.kind, "input": s.input, "output": s.output} for s in b.sublayers
                ],
            }
            for b in self.blocks
        ]


class _Graph:
    """Name-indexed view of a GraphProto (nodes in their topological file order)."""

    def __init__(self, graph: onnx.GraphProto):
        self.nodes = list(graph.node)
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.readers: dict[str, list[int]] = defaultdict(list)
        for i, n in enumerate(self.nodes):
            for t in dict.fromkeys(n.input):
                if t:
                    self.readers[t].append(i)
        self.const = {init.name for init in graph.initializer}
        for n in self.nodes:  # constant folding by reachability: all inputs constant
            if n.op_type == "Constant" or (n.input and all(t in self.const or not t for t in n.input)):
                self.const.update(o for o in n.output if o)

    def ancestors(self, tensor: str) -> tuple[set[int], set[str]]:
        """(node indices, tensor names) upstream of `tensor`, itself included."""
        nodes, tensors, stack = set(), {tensor}, [tensor]
        while stack:
            i = self.producer.get(stack.pop())
            if i is None or i in nodes:
                continue
            nodes.add(i)
            for t in self.nodes[i].input:
                if t and t not in tensors and t not in self.const:
                    tensors.add(t)
                    stack.append(t)
        return nodes, tensors

    def between(self, source: str, target: str) -> list[int]:
        """Nodes on paths from `source` to `target` (target's producer included)."""
        upstream, _ = self.ancestors(target)
        reach, found = {source}, []
        for i in sorted(upstream):
            if any(t in reach for t in self.nodes[i].input):
                found.append(i)
                reach.update(self.nodes[i].output)
        return found

    def weighted(self, i: int) -> bool:
        n = self.nodes[i]
        return n.op_type in WEIGHTED_OPS and any(t in self.const for t in n.input[:2])


def _residual(g: _Graph, i: int) -> tuple[SubLayer | None, str | None]:
    """(sub-layer, None) if Add node i is a residual connection, else (None, reason or None)."""
    node = g.nodes[i]
    if len(node.input) != 2 or any(t in g.const for t in node.input) or node.input[0] == node.input[1]:
        return None, None
    if _feeds_softmax(g, node.output[0]):
        return None, None  # scores + mask/bias inside attention, not a residual
    a, b = node.input
    for skip, branch in ((a, b), (b, a)):
        _, upstream = g.ancestors(branch)
        if skip not in upstream:
            continue
        nodes = g.between(skip, branch)
        ops = {g.nodes[j].op_type for j in nodes}
        if not any(g.weighted(j) for j in nodes) and not ops & ATTENTION_OPS:
            if ops & {"MatMul", "Gemm", "Conv", "ConvTranspose"}:
                why = "a Conv branch (a CNN residual)" if "Conv" in ops else "no MatMul/Gemm with constant weights"
                return None, f"x + f(x) with {why} in f"
            return None, None
        weighted = sum(g.weighted(j) for j in nodes)
        kind = "attention" if ops & ATTENTION_OPS else ("mlp" if weighted >= 2 else "other")
        names = [g.nodes[j].name for j in nodes]
        return SubLayer("", kind, -1, skip, node.output[0], node.output[0], node.name, names), None
    return None, None


def _feeds_softmax(g: _Graph, tensor: str, hops: int = 3) -> bool:
    """True when `tensor` reaches a Softmax through at most `hops` elementwise nodes."""
    for r in g.readers[tensor]:
        op = g.nodes[r].op_type
        if op == "Softmax" or (
            hops > 1
            and op in {"Add", "Sub", "Mul", "Div", "Where", "Cast"}
            and _feeds_softmax(g, g.nodes[r].output[0], hops - 1)
        ):
            return True
    return False


def _post_region(g: _Graph, add_out: str, next_skip: str) -> list[int] | None:
    """The weight-free region from a residual Add's output to the next stream tensor, or None."""
    _, upstream = g.ancestors(next_skip)
    if add_out not in upstream:
        return None
    region = g.between(add_out, next_skip)
    inside = set(region)
    if any(g.weighted(j) or g.nodes[j].op_type in ATTENTION_OPS for j in region):
        return None
    if any(r not in inside for r in g.readers[add_out]):
        return None  # the pre-norm sum is read elsewhere too: not a plain post-norm
    return region


def _last_post_region(g: _Graph, add_out: str, like: list[int]) -> tuple[list[int], str] | None:
    """For the last sub-layer of a post-LN chain: the region after it with the same op types as `like`."""
    wanted, reach, visited = Counter(g.nodes[j].op_type for j in like), {add_out}, 0
    for i in range(g.producer.get(add_out, -1) + 1, len(g.nodes)):
        if visited > len(like) + 12:
            break
        if not any(t in reach for t in g.nodes[i].input):
            continue
        visited += 1
        reach.update(g.nodes[i].output)
        for out in g.nodes[i].output:
            region = g.between(add_out, out)
            if Counter(g.nodes[j].op_type for j in region) == wanted and all(r in region for r in g.readers[add_out]):
                return region, out
    return None


def _chains(g: _Graph, subs: list[SubLayer]) -> list[list[SubLayer]]:
    """Split sub-layers (in graph order) into chains along the residual stream."""
    chains: list[list[SubLayer]] = []
    regions: dict[int, list[int]] = {}  # id(sub-layer) -> its post-norm node indices
    for sub in subs:
        for chain in reversed(chains):
            prev = chain[-1]
            region = [] if sub.input == prev.add_output else _post_region(g, prev.add_output, sub.input)
            if region is not None:
                regions[id(prev)], prev.output = region, sub.input
                chain.append(sub)
                break
        else:
            chains.append([sub])
    for chain in chains:  # the last post-LN sub-layer: find its norm by the earlier ones' shape
        if len(chain) > 1 and regions.get(id(chain[-2])):
            found = _last_post_region(g, chain[-1].add_output, regions[id(chain[-2])])
            if found is not None:
                regions[id(chain[-1])], chain[-1].output = found
    for sub in subs:
        sub.post_norm = [g.nodes[j].name for j in regions.get(id(sub), [])]
    return chains


def find_blocks(model: onnx.ModelProto) -> BlockGraph:
    """Discover the transformer blocks of `model` (see module docstring)."""
    g = _Graph(model.graph)
    subs, rejected = [], []
    for i, node in enumerate(g.nodes):
        if node.op_type != "Add":
            continue
        sub, why = _residual(g, i)
        if sub is not None:
            subs.append(sub)
        elif why:
            rejected.append((node.name, why))
    result = BlockGraph([], rejected)
    for chain in _chains(g, subs):
        _group(chain, result)
    if not result.blocks:
        result.message = _none_message(model, subs, rejected, result.notes)
        return result
    for b in result.blocks:
        for s in b.sublayers:
            s.block = b.index
    signatures = Counter(tuple(b.kinds) for b in result.blocks)
    common = signatures.most_common(1)[0][0]
    odd = [b.name for b in result.blocks if tuple(b.kinds) != common]
    if odd:
        result.notes.append(f"blocks {odd} differ from the common structure {list(common)}")
    result.message = (
        f"{len(result.blocks)} {result.layout} transformer blocks "
        f"({', '.join(common)} each), {sum(len(b.sublayers) for b in result.blocks)} sub-layers"
    )
    return result


def _group(chain: list[SubLayer], result: BlockGraph) -> None:
    """Cut a chain into blocks: attention ... mlp. An MLP right after a block is a block of its own (a
    graph whose attention sub-layer was dropped before: each sub-layer object belongs to one block).
    Leftovers are recorded, not dropped silently."""
    current: list[SubLayer] = []
    for sub in chain:
        if current and current[-1].kind == "mlp":  # the block before ended with its MLP
            current = []
        if not current and (sub.kind == "other" or (sub.kind == "mlp" and not result.blocks)):
            result.rejected.append((sub.add_node, f"{sub.kind} sub-layer outside any attention+MLP block"))
            continue
        current.append(sub)
        if sub.kind == "mlp":
            _add_block(current, result)
    if current and current[-1].kind != "mlp":
        for sub in current:
            result.rejected.append((sub.add_node, "sub-layer of a block without an MLP"))


def _add_block(subs: list[SubLayer], result: BlockGraph) -> None:
    index = len(result.blocks)
    counts: Counter = Counter()
    for s in subs:
        prefix = {"attention": "attn", "mlp": "mlp"}.get(s.kind, "sub")
        counts[prefix] += 1
        s.name = f"{prefix}{index}" + (f"_{counts[prefix]}" if counts[prefix] > 1 else "")
    norm = "post-LN" if any(s.post_norm for s in subs) else "pre-LN"
    result.blocks.append(Block(index, f"block{index}", subs[0].input, subs[-1].output, list(subs), norm))


def _none_message(model: onnx.ModelProto, subs: list[SubLayer], rejected: list, notes: list[str]) -> str:
    name = model.graph.name or "graph"
    adds = sum(n.op_type == "Add" for n in model.graph.node)
    if subs:
        kinds = Counter(s.kind for s in subs)
        return (
            f"no transformer blocks in '{name}': {len(subs)} residual sub-layers "
            f"({dict(kinds)}) but no attention followed by an MLP on one residual stream"
        )
    why = f"; {len(rejected)} residual Adds rejected, e.g. {rejected[0][1]}" if rejected else ""
    return (
        f"no transformer blocks in '{name}': none of its {adds} Add nodes is a residual x + f(x) "
        f"whose branch f has learned MatMul/Gemm weights{why}"
    )
