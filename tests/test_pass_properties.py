"""Property tests shared by every exact pass: equal outputs and idempotence on random graphs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings

from passes.base import PassContext
from passes.manager import PassSpec, run_passes
from passes.registry import PASSES
from tests.graph_strategies import random_graphs

EXACT_PASSES = sorted(name for name, factory in PASSES.items() if factory().exact)


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("pass_name", EXACT_PASSES)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=random_graphs())
def test_exact_pass_keeps_outputs_and_is_idempotent(pass_name, model):
    once, records = run_passes(model, [PassSpec(pass_name)], PassContext(opset=17))
    assert len(once.graph.node) <= len(model.graph.node) + 1  # an opset upgrade may add a node
    rng = np.random.default_rng(0)
    for rows in (1, 3):
        x = rng.standard_normal((rows, 6)).astype(np.float32)
        np.testing.assert_allclose(_run(once, x), _run(model, x), rtol=1e-6, atol=1e-6)
    twice, again = run_passes(once, [PassSpec(pass_name)], PassContext(opset=17))
    assert again[0].changed == {}, (pass_name, again[0].changed)
    assert len(twice.graph.node) == len(once.graph.node)


def test_every_registered_pass_is_covered():
    assert set(EXACT_PASSES) | {"precision", "drop-blocks", "quantize"} == set(PASSES)  # the lossy ones
