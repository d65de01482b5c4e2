"""The pass contract (passes/base.py): declared capabilities, their safe defaults, the context."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from calibration.data import CalibrationData
from passes.base import CAPABILITIES, Pass, PassContext, PassResult
from passes.registry import PASSES


def test_capabilities_default_to_the_safe_value():
    @dataclasses.dataclass
    class Quiet(Pass):
        name = "quiet"
        level = "graph"

        def run(self, graph, ctx):
            return PassResult()

    assert Quiet.exact is False  # lossy unless it says otherwise: the verifier measures it
    assert Quiet.keeps_types is False  # types re-inferred after it
    assert Quiet.reads_weights is True  # handed the whole model
    assert Quiet.needs_calibration is False  # not handed data it never asked for


def test_a_pass_whose_declarations_do_not_hold_together_is_refused_at_import():
    with pytest.raises(TypeError, match="level must be one of"):

        class NoLevel(Pass):
            name = "no-level"

            def run(self, graph, ctx):
                return PassResult()

    with pytest.raises(TypeError, match="a model-level pass implements run_model"):

        class GraphMethodOnly(Pass):
            name = "graph-method-only"
            level = "model"

            def run(self, graph, ctx):
                return PassResult()

    with pytest.raises(TypeError, match="declares its registered name"):

        class Nameless(Pass):
            level = "graph"

            def run(self, graph, ctx):
                return PassResult()


@pytest.mark.parametrize("name", sorted(PASSES))
def test_every_pass_declares_its_capabilities_on_the_class_not_as_options(name):
    cls = PASSES[name]
    assert cls.name == name and cls.level in ("graph", "model")
    options = {f.name for f in dataclasses.fields(cls)}
    assert not options & {"name", *CAPABILITIES}, f"{name}: capabilities are class attributes, not options"
    assert all(isinstance(getattr(cls, c), str if c == "level" else bool) for c in CAPABILITIES)


def test_context_takes_a_list_of_feed_dicts_as_calibration_data():
    feeds = [{"x": np.ones((2, 3), np.float32)}, {"x": np.zeros((1, 3), np.float32)}]
    ctx = PassContext(opset=17, calibration=feeds)
    assert isinstance(ctx.calibration, CalibrationData) and len(ctx.calibration) == 3
    assert [f["x"].shape for f in ctx.calibration] == [(2, 3), (1, 3)]
    assert PassContext(opset=17, calibration=[]).calibration is None
