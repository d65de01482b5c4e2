"""The README's "Adding a pass" example, run as written: registered, validated, run by the manager.

The example is the project's promise that a new exact graph pass needs only its module,
its test and one registry entry; this test keeps the example true as the code changes.
"""

from __future__ import annotations

import re
import types
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from passes import registry
from passes.base import PassContext
from passes.manager import run_passes
from passes.registry import PassSpec, build_passes
from tests.onnx_helpers import first_output, make_model

README = Path(__file__).resolve().parents[2] / "README.md"


def _example_blocks() -> tuple[str, str]:
    section = README.read_text().split("### Adding a pass", 1)[1]
    module, registration = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    return module, registration


@pytest.fixture
def example_pass(monkeypatch):
    """The README's pass class, registered the way its registry line registers it."""
    module_source, registration = _example_blocks()
    module = types.ModuleType("readme_example_pass")
    exec(compile(module_source, "README.md", "exec"), module.__dict__)  # noqa: S102 - our own README
    cls = module.DropNoopTranspose
    description = re.search(r'\(DropNoopTranspose, "(.*)"\)', registration).group(1)
    monkeypatch.setitem(registry.PASSES, cls.name, cls)
    monkeypatch.setitem(registry.DESCRIPTIONS, cls.name, description)
    return cls


def _model():
    nodes = [
        helper.make_node("Transpose", ["x"], ["t0"], name="noop", perm=[0, 1]),
        helper.make_node("Relu", ["t0"], ["r"], name="relu"),
        helper.make_node("Transpose", ["r"], ["y"], name="swap", perm=[1, 0]),
    ]
    return make_model(nodes, {"x": [2, 3]}, {"y": [3, 2]})


def test_readme_example_pass_registers_validates_and_runs(example_pass):
    assert example_pass.exact and example_pass.level == "graph"
    [(spec, built)] = build_passes([PassSpec("drop-noop-transpose")])
    assert isinstance(built, example_pass)
    model = _model()
    out, records = run_passes(model, [PassSpec("drop-noop-transpose")], PassContext(opset=17))
    assert [n.op_type for n in out.graph.node] == ["Relu", "Transpose"]
    assert records[0].changed == {"noop_transpose_removed": 1}
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    np.testing.assert_array_equal(first_output(out, {"x": x}), first_output(model, {"x": x}))
    _, again = run_passes(out, [PassSpec("drop-noop-transpose")], PassContext(opset=17))
    assert again[0].changed == {}  # idempotent


def test_readme_example_pass_options_are_validated(example_pass):
    with pytest.raises(Exception, match="drop-noop-transpose"):
        build_passes([PassSpec("drop-noop-transpose", {"perm": [0, 1]})])
