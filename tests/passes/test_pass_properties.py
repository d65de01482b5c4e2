"""Property tests shared by every exact pass: equal outputs and idempotence on random graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings

from passes.base import PassContext
from passes.manager import PassSpec, run_passes
from passes.model_utils import import_with_types, infer_graph_types
from passes.registry import PASSES, create_pass
from tests.graph_strategies import random_graphs

EXACT_PASSES = sorted(name for name, cls in PASSES.items() if cls.exact)
KEEPS_TYPES = sorted(name for name, cls in PASSES.items() if cls.keeps_types)


def _run(model, x) -> dict[str, np.ndarray]:
    """Every graph output by name (the generator makes several: read by other nodes, intermediates)."""
    onnx.checker.check_model(model, full_check=True)  # no dangling tensor, no renamed interface
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"x": x}), strict=True))


def assert_same_outputs(after, before, tol: float) -> None:
    assert [o.name for o in after.graph.output] == [o.name for o in before.graph.output]
    rng = np.random.default_rng(0)
    for rows in (1, 3):
        x = rng.standard_normal((rows, 6)).astype(np.float32)
        got, want = _run(after, x), _run(before, x)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("pass_name", EXACT_PASSES)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=random_graphs())
def test_exact_pass_keeps_outputs_and_is_idempotent(pass_name, model):
    once, records = run_passes(model, [PassSpec(pass_name)], PassContext(opset=17))
    assert len(once.graph.node) <= len(model.graph.node) + 1  # an opset upgrade may add a node
    assert_same_outputs(once, model, 1e-6)
    twice, again = run_passes(once, [PassSpec(pass_name)], PassContext(opset=17))
    assert again[0].changed == {}, (pass_name, again[0].changed)
    assert len(twice.graph.node) == len(once.graph.node)


def test_every_registered_pass_is_covered():
    lossy = {"precision", "drop-blocks", "quantize", "quantize-embeddings"}
    assert set(EXACT_PASSES) | lossy == set(PASSES)


def test_keeps_types_is_declared_by_graph_passes_only():
    """The manager reads keeps_types after graph passes alone (model passes are re-imported with types)."""
    assert KEEPS_TYPES and all(PASSES[name].level == "graph" for name in KEEPS_TYPES)


@pytest.mark.parametrize("pass_name", KEEPS_TYPES)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=random_graphs())
def test_keeps_types_passes_leave_inference_nothing_new(pass_name, model):
    """The manager skips re-inferring types after these passes: re-inferring changes nothing."""
    graph = import_with_types(model)
    create_pass(pass_name).run(graph, PassContext(opset=17))
    graph.cleanup()

    def types() -> dict:
        return {n: (t.dtype, t.shape) for n, t in graph.tensors().items() if isinstance(t, gs.Variable)}

    kept = types()
    infer_graph_types(graph, model)
    assert types() == kept


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=random_graphs())
def test_fold_group_keeps_outputs_and_stages_match(model):
    """The whole group on one graph carried from pass to pass: outputs kept, and the model
    handed to on_stage after the last pass is the one returned."""
    stages = []
    out, records = run_passes(model, [PassSpec("fold")], PassContext(opset=17), lambda r, m: stages.append(m))
    assert len(stages) == len(records) and stages[-1] is out
    assert_same_outputs(out, model, 1e-5)
    again, _ = run_passes(out, [PassSpec("fold")], PassContext(opset=17))
    assert len(again.graph.node) == len(out.graph.node)
