"""Block-by-block scoring (passes/blocks/segmented.py): the same outputs as the whole graph, each
segment's session made once per wavefront, shared prefixes run once."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest

from converter import api
from converter.core.profiles import ShapeProfile
from converter.verification.compare import OnnxRunner
from passes.blocks.discovery import find_blocks
from passes.blocks.liveness import node_inputs
from passes.blocks.rewiring import GATE_PREFIX, gated_model, remove_units
from passes.blocks.scores import GatedSession
from passes.blocks.segmented import split_at

PROFILE = {"input_ids": ShapeProfile((1, 4), (2, 12), (2, 16))}
SETS = [[], ["block0"], ["attn1"], ["mlp0", "attn1"], ["block1"]]


@functools.cache
def llama(factory: str) -> str:
    """A 2-layer Llama (RMSNorm, rotary, GQA) exported once per test session."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="trtforge-segments-"))
    atexit.register(shutil.rmtree, folder, True)
    out = folder / f"{factory}.onnx"
    api.export(f"scripts.llama_spec:{factory}", out, shapes=PROFILE, dtypes={"input_ids": "int64"})
    return str(out)


def _batches(count: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"input_ids": rng.integers(0, 256, (2, 12))} for _ in range(count)]


def test_segments_cover_every_node_once_and_read_only_what_came_before():
    model = onnx.load(llama("tiny"))
    bg = find_blocks(model)
    units = bg.units("all")
    gated = gated_model(model, units)
    gates = {GATE_PREFIX + u.name for u in units}
    segments = split_at(gated.graph, [b.output for b in bg.blocks], gates)
    assert len(segments) == len(bg.blocks) + 1  # one per block, then the final norm and the head
    assert sum(len(s.nodes) for s in segments) == len(gated.graph.node)
    available = {i.name for i in gated.graph.input}
    weights = {t.name for t in gated.graph.initializer}
    for segment in segments:
        made = {o for n in segment.nodes for o in n.output}
        read = {t for n in segment.nodes for t in node_inputs(n)}
        assert read - made - weights <= available, f"segment {segment.index} reads a later tensor"
        assert set(segment.inputs) == read - made - weights
        available |= set(segment.outputs)
    assert segments[1].inputs != [bg.blocks[0].output]  # side tensors (mask, rotary tables) cross too
    assert {o.name for o in gated.graph.output} <= set(segments[-1].outputs)


@pytest.mark.parametrize("factory", ["tiny", "tiny_fp16"])
@pytest.mark.parametrize("budget", [0, None])
def test_block_by_block_equals_the_rewired_graph(factory, budget):
    model = onnx.load(llama(factory))
    bg = find_blocks(model)
    gated = GatedSession(model, bg, budget_bytes=budget)
    tol = 2e-2 if factory == "tiny_fp16" else 1e-5
    for feeds in _batches():
        for removed in SETS:
            want = OnnxRunner(remove_units(model, bg, removed)).run(feeds)["output"]
            got = gated.run(feeds, removed)["output"].astype(np.float32)
            np.testing.assert_allclose(got, want, atol=tol, rtol=tol)
    kept = gated.segments.sessions
    assert (not kept) if budget == 0 else len(kept) == len(gated.segments.segments)


def test_one_wavefront_makes_each_session_once_and_shares_prefixes():
    model = onnx.load(llama("tiny"))
    bg = find_blocks(model)
    batches = _batches(2)
    gated = GatedSession(model, bg, budget_bytes=0)  # keeps nothing: every wavefront makes every session
    results = {(b, i): out for b, i, out in gated.run_many(batches, SETS)}
    segments = gated.segments
    assert segments.created == len(segments.segments)
    # per batch, segment 0 (embedding, block 0) runs for its 3 distinct gate settings (nothing off,
    # block0 off, mlp0 off: [], [attn1] and [block1] share the first), block 1 and the head once per
    # set: 13 runs, against 15 for 5 sets run one by one
    assert segments.segment_runs == 2 * (3 + len(SETS) + len(SETS))
    for (b, i), out in results.items():
        alone = gated.run(batches[b], SETS[i])
        np.testing.assert_array_equal(out["output"], alone["output"])
