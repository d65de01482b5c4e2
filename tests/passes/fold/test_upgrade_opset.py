"""upgrade-opset: ops whose meaning changed across the opsets crossed keep their results."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from passes.base import PassContext
from passes.manager import run_passes
from passes.registry import PassSpec
from tests.onnx_helpers import first_output, make_model


@pytest.mark.parametrize("axis", [0, 1, -2, 2])
def test_hardmax_keeps_its_pre_13_meaning(axis):
    """Before 13 Hardmax works on the input flattened at `axis`; the converter keeps the node
    as it is, which changes the result unless `axis` is the last dim."""
    model = make_model(
        [helper.make_node("Hardmax", ["x"], ["y"], axis=axis, name="hm")],
        {"x": [2, 3, 4]},
        {"y": [2, 3, 4]},
        opset=12,
        ir_version=7,
    )
    upgraded, records = run_passes(model, [PassSpec("upgrade-opset", {"target": 20})], PassContext(opset=12))
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(first_output(upgraded, {"x": x}), first_output(model, {"x": x}))
    assert records[0].changed.get("hardmax_flattened", 0) == (0 if axis == 2 else 1)
