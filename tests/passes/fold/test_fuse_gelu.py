"""fuse-gelu: elementary GELU in any association order -> Gelu (opset 20)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from passes.base import PassContext
from passes.manager import PassSpec, run_passes
from tests.onnx_helpers import first_output, make_model


def _c(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, np.float32), name)


def gelu_graph(form: str, order: int, scale_by_mul: bool, cube_by_pow: bool, opset: int = 20) -> onnx.ModelProto:
    """y = Sigmoid(gelu(x + 1)) with GELU spelled out; `order` picks how the final product associates."""
    inits = [_c("one", 1.0), _c("half", 0.5), _c("bias", 0.1)]
    nodes = [helper.make_node("Add", ["x", "bias"], ["v"], name="pre")]
    if form == "erf":
        if scale_by_mul:
            inits.append(_c("inv_sqrt2", 1 / math.sqrt(2)))
            nodes.append(helper.make_node("Mul", ["v", "inv_sqrt2"], ["scaled"], name="scale"))
        else:
            inits.append(_c("sqrt2", math.sqrt(2)))
            nodes.append(helper.make_node("Div", ["v", "sqrt2"], ["scaled"], name="scale"))
        nodes.append(helper.make_node("Erf", ["scaled"], ["act"], name="act"))
    else:
        inits += [_c("three", 3.0), _c("k", 0.044715), _c("s", math.sqrt(2 / math.pi))]
        if cube_by_pow:
            nodes.append(helper.make_node("Pow", ["v", "three"], ["cube"], name="cube"))
        else:
            nodes += [
                helper.make_node("Mul", ["v", "v"], ["sq"], name="sq"),
                helper.make_node("Mul", ["v", "sq"], ["cube"], name="cube"),
            ]
        nodes += [
            helper.make_node("Mul", ["cube", "k"], ["kc"], name="kc"),
            helper.make_node("Add", ["v", "kc"], ["inner"], name="inner"),
            helper.make_node("Mul", ["s", "inner"], ["scaled"], name="scale"),
            helper.make_node("Tanh", ["scaled"], ["act"], name="act"),
        ]
    nodes.append(helper.make_node("Add", ["act", "one"], ["t"], name="one_plus"))
    if order == 0:  # (x * t) * 0.5
        nodes += [
            helper.make_node("Mul", ["v", "t"], ["p"], name="m1"),
            helper.make_node("Mul", ["p", "half"], ["g"], name="m2"),
        ]
    elif order == 1:  # x * (t * 0.5)
        nodes += [
            helper.make_node("Mul", ["t", "half"], ["p"], name="m1"),
            helper.make_node("Mul", ["v", "p"], ["g"], name="m2"),
        ]
    else:  # (x * 0.5) * t
        nodes += [
            helper.make_node("Mul", ["half", "v"], ["p"], name="m1"),
            helper.make_node("Mul", ["t", "p"], ["g"], name="m2"),
        ]
    nodes.append(helper.make_node("Sigmoid", ["g"], ["y"], name="post"))
    return make_model(nodes, {"x": ["N", 8]}, {"y": ["N", 8]}, inits, opset=opset, ir_version=9, name="gelu")


@settings(max_examples=200, deadline=None)
@given(
    form=st.sampled_from(["erf", "tanh"]),
    order=st.integers(0, 2),
    by_mul=st.booleans(),
    by_pow=st.booleans(),
    rows=st.integers(1, 4),
)
def test_property_any_spelling_fuses_exactly(form, order, by_mul, by_pow, rows):
    model = gelu_graph(form, order, by_mul, by_pow)
    fused, records = run_passes(model, [PassSpec("fuse-gelu")], PassContext(opset=20))
    ops = [n.op_type for n in fused.graph.node]
    assert ops == ["Add", "Gelu", "Sigmoid"], ops
    gelu = next(n for n in fused.graph.node if n.op_type == "Gelu")
    assert helper.get_attribute_value(gelu.attribute[0]).decode() == ("none" if form == "erf" else "tanh")
    x = np.random.default_rng(rows).standard_normal((rows, 8)).astype(np.float32) * 3
    np.testing.assert_allclose(first_output(fused, {"x": x}), first_output(model, {"x": x}), atol=2e-6)
    _, again = run_passes(fused, [PassSpec("fuse-gelu")], PassContext(opset=20))
    assert again[0].changed == {}


def test_old_opset_is_rejected_with_reason_then_upgrade_fuses():
    model = gelu_graph("erf", 0, False, False, opset=17)
    same, records = run_passes(model, [PassSpec("fuse-gelu")], PassContext(opset=17))
    assert records[0].changed == {} and "opset 17 < 20" in records[0].rejected[0]["reason"]
    fused, records = run_passes(
        model, [PassSpec("upgrade-opset", {"target": 20}), PassSpec("fuse-gelu")], PassContext(opset=17)
    )
    assert records[0].changed == {"opset_upgraded": 1} and records[1].changed == {"gelu_none_fused": 1}
    x = np.linspace(-4, 4, 16, dtype=np.float32).reshape(2, 8)
    np.testing.assert_allclose(first_output(fused, {"x": x}), first_output(model, {"x": x}), atol=2e-6)


def test_wrong_constant_is_not_fused():
    model = gelu_graph("erf", 0, False, False)
    for init in model.graph.initializer:
        if init.name == "half":
            init.CopyFrom(_c("half", 0.4))
    _, records = run_passes(model, [PassSpec("fuse-gelu")], PassContext(opset=20))
    assert records[0].changed == {} and records[0].rejected


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_torch_gelu_exports_fuse(approximate, tmp_path):
    torch = pytest.importorskip("torch")
    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(approximate=approximate)).eval()
    path = tmp_path / "g.onnx"
    torch.onnx.export(
        module,
        (torch.randn(2, 8),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "N"}},
    )
    model = onnx.load(str(path))
    fused, records = run_passes(model, [PassSpec("upgrade-opset"), PassSpec("fuse-gelu")], PassContext(opset=17))
    assert "Gelu" in [n.op_type for n in fused.graph.node], records[1].rejected
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_allclose(first_output(fused, {"x": x}), first_output(model, {"x": x}), atol=1e-5)
