"""fold-constants: the numpy tier agrees with onnxruntime bit for bit, and takes the
shape subgraphs exporters write without building an onnxruntime session."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from passes.base import PassContext
from passes.fold import const_eval
from passes.manager import PassSpec, run_passes
from tests.onnx_helpers import first_output, make_model

OPSET = 17
I64 = np.iinfo(np.int64)


def _ort_node(op: str, inputs: list[np.ndarray | None], opset: int = OPSET, **attrs) -> np.ndarray:
    """Run one node in onnxruntime, its inputs fed as initializers (None: omitted)."""
    names = ["" if v is None else f"i{k}" for k, v in enumerate(inputs)]
    while names and not names[-1]:
        names.pop()
    inits = {n: v for n, v in zip(names, inputs, strict=False) if n}
    model = make_model(
        [helper.make_node(op, names, ["y"], **attrs)], [], [onnx.ValueInfoProto(name="y")], inits, opset=opset
    )
    return first_output(model, {}, optimize=False)  # no folding of its own


def _numpy_node(op: str, inputs: list[np.ndarray | None], opset: int = OPSET, **attrs) -> np.ndarray | None:
    proto = helper.make_node(op, [f"i{k}" for k in range(len(inputs))], ["y"], **attrs)
    model = make_model([proto], {f"i{k}": None for k in range(len(inputs))}, {"y": None}, opset=opset, ir_version=None)
    node = gs.import_onnx(model).nodes[0]
    return const_eval.evaluate(node, [None if v is None else np.asarray(v) for v in inputs], opset)


def _same(op: str, inputs: list[np.ndarray | None], opset: int = OPSET, **attrs) -> np.ndarray | None:
    """The numpy tier's value, asserted equal to onnxruntime's (dtype, shape, bits) when it gives one."""
    mine = _numpy_node(op, inputs, opset, **attrs)
    if mine is not None:
        ref = _ort_node(op, inputs, opset, **attrs)
        assert mine.dtype == ref.dtype and mine.shape == ref.shape, (mine, ref)
        np.testing.assert_array_equal(mine, ref)
    return mine


ARANGE = np.arange(24, dtype=np.int64).reshape(2, 3, 4)


@pytest.mark.parametrize(
    "op, inputs, attrs",
    [
        ("Identity", [ARANGE], {}),
        ("Shape", [ARANGE], {}),
        ("Shape", [ARANGE], {"start": 1}),
        ("Shape", [ARANGE], {"start": -2, "end": -1}),
        ("Cast", [ARANGE], {"to": TensorProto.INT32}),
        ("Cast", [np.array([0, 3, -1], np.int64)], {"to": TensorProto.BOOL}),
        ("Cast", [np.array([True, False])], {"to": TensorProto.INT64}),
        ("Unsqueeze", [ARANGE, np.array([0, -1], np.int64)], {}),
        ("Squeeze", [ARANGE[:1], np.array([0], np.int64)], {}),
        ("Squeeze", [ARANGE[:1, :, :1]], {}),
        ("Concat", [ARANGE, ARANGE], {"axis": -1}),
        ("Gather", [ARANGE, np.array(-1, np.int64)], {"axis": 1}),
        ("Gather", [ARANGE, np.array([[0, 2], [1, 1]], np.int64)], {"axis": 2}),
        ("Reshape", [ARANGE, np.array([0, -1], np.int64)], {}),
        ("Reshape", [ARANGE, np.array([0, 0, 2, 2], np.int64)], {"allowzero": 0}),
        ("Transpose", [ARANGE], {}),
        ("Transpose", [ARANGE], {"perm": [1, 2, 0]}),
        ("ConstantOfShape", [np.array([2, 3], np.int64)], {}),
        ("ConstantOfShape", [np.array([2], np.int64)], {"value": numpy_helper.from_array(np.array([7], np.int32))}),
        ("Add", [ARANGE, np.array([I64.max], np.int64)], {}),  # wraps, as onnxruntime does
        ("Sub", [np.array([3], np.int32), np.array([[5], [1]], np.int32)], {}),
        ("Mul", [ARANGE, np.array(3, np.int64)], {}),
    ],
)
def test_each_op_matches_onnxruntime(op, inputs, attrs):
    assert _same(op, inputs, **attrs) is not None


@pytest.mark.parametrize(
    "op, inputs, attrs",
    [
        ("Add", [np.ones(3, np.float32), np.ones(3, np.float32)], {}),  # float math: rounding is onnxruntime's
        ("Cast", [np.ones(3, np.float32)], {"to": TensorProto.INT64}),
        ("Squeeze", [ARANGE[:1], np.array([], np.int64)], {}),  # empty axes: the implementations disagree
        ("Slice", [np.arange(5), np.array([-9]), np.array([I64.min]), np.array([0]), np.array([-1])], {}),
        ("Slice", [np.arange(5), np.array([3]), np.array([I64.max]), np.array([0]), np.array([-1])], {}),
        ("Div", [np.array([7], np.int64), np.array([-2], np.int64)], {}),
    ],
)
def test_forms_left_to_onnxruntime(op, inputs, attrs):
    assert _numpy_node(op, inputs, **attrs) is None


@settings(max_examples=300, deadline=None)
@given(
    dim=st.integers(0, 6),
    start=st.sampled_from([-9, -6, -3, -1, 0, 1, 2, 5, 6, 9, I64.min, I64.max, 2**31 - 1]),
    end=st.sampled_from([-9, -6, -3, -1, 0, 1, 2, 5, 6, 9, I64.min, I64.max, 2**31 - 1, -(2**31)]),
    step=st.sampled_from([1, 2, 3, -1, -2, -3]),
)
def test_slice_matches_onnxruntime_whenever_it_evaluates(dim, start, end, step):
    x = np.arange(dim * 2, dtype=np.int64).reshape(2, dim)
    _same("Slice", [x, np.array([start]), np.array([end]), np.array([-1]), np.array([step])])


def _same_padding_model() -> onnx.ModelProto:
    """x[N, 4, 7, 7] -> "same" padding computed from Shape(x), as TorchScript writes it."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i2"], ["h"], axis=0),
        helper.make_node("Mul", ["h", "two"], ["h2"]),
        helper.make_node("Sub", ["h2", "h"], ["p"]),
        helper.make_node("Sub", ["p", "six"], ["q"]),
        helper.make_node("Unsqueeze", ["q", "ax0"], ["q1"]),
        helper.make_node("Concat", ["q1", "q1", "q1", "q1"], ["pp"], axis=0),
        helper.make_node(
            "ConstantOfShape", ["four"], ["zeros"], value=numpy_helper.from_array(np.array([0], np.int64))
        ),
        helper.make_node("Concat", ["zeros", "pp"], ["pads8"], axis=0),
        helper.make_node("Reshape", ["pads8", "m1_2"], ["pr"]),
        helper.make_node("Slice", ["pr", "m1", "big_neg", "ax0", "m1"], ["rev"]),
        helper.make_node("Transpose", ["rev"], ["tr"], perm=[1, 0]),
        helper.make_node("Reshape", ["tr", "m1"], ["pads"]),
        helper.make_node("Constant", [], ["pad_value"], value=numpy_helper.from_array(np.array(0.0, np.float32))),
        helper.make_node("Pad", ["x", "pads", "pad_value"], ["y"]),
    ]
    ints = {
        "i2": np.array(2),
        "two": np.array(2),
        "six": np.array(6),
        "ax0": np.array([0]),
        "four": np.array([4]),
        "m1_2": np.array([-1, 2]),
        "m1": np.array([-1]),
        "big_neg": np.array([I64.min]),
    }
    inits = {k: np.asarray(v, np.int64) for k, v in ints.items()}
    return make_model(nodes, {"x": ["N", 4, 7, 7]}, {"y": None}, inits, opset=OPSET, name="pad")


def test_shape_subgraph_folds_without_onnxruntime(monkeypatch):
    model = _same_padding_model()
    reference = gs.import_onnx(model)  # what onnx-graphsurgeon's folder (onnxruntime) makes of it
    reference.fold_constants().cleanup()
    ort_pads = reference.nodes[0].inputs[1].values

    def no_session(*args, **kwargs):
        raise AssertionError("onnx-graphsurgeon's folder was called")

    monkeypatch.setattr(gs.Graph, "fold_constants", no_session)
    out, records = run_passes(model, [PassSpec("fold-constants")], PassContext(opset=OPSET))
    assert [n.op_type for n in out.graph.node] == ["Pad"] and records[0].changed == {"nodes_folded": 14}
    pads = next(i for i in out.graph.initializer if i.name == out.graph.node[0].input[1])
    assert numpy_helper.to_array(pads).tolist() == ort_pads.tolist() == [1, 1, 0, 0, 1, 1, 0, 0]
    x = np.random.default_rng(0).standard_normal((2, 4, 7, 7)).astype(np.float32)
    np.testing.assert_array_equal(first_output(out, {"x": x}), first_output(model, {"x": x}))
    _, again = run_passes(out, [PassSpec("fold-constants")], PassContext(opset=OPSET))
    assert again[0].changed == {}


def test_float_math_still_folds_through_onnxruntime():
    nodes = [helper.make_node("Div", ["a", "b"], ["c"]), helper.make_node("Add", ["x", "c"], ["y"])]
    inits = {"a": np.array([1, 2, 3], np.float32), "b": np.full(3, 3, np.float32)}
    model = make_model(nodes, {"x": [3]}, {"y": [3]}, inits, opset=OPSET, ir_version=None)
    out, records = run_passes(model, [PassSpec("fold-constants")], PassContext(opset=OPSET))
    assert [n.op_type for n in out.graph.node] == ["Add"] and records[0].changed == {"nodes_folded": 1}
    folded = next(i for i in out.graph.initializer if i.name == out.graph.node[0].input[1])
    np.testing.assert_array_equal(numpy_helper.to_array(folded), np.array([1, 2, 3], np.float32) / np.float32(3))


@pytest.mark.parametrize("idx, folds", [([1, 2], True), ([0, 1], False)])
def test_partly_dynamic_shape_folds_only_its_static_dims(idx, folds):
    """x[N, 3, 4]: Gather(Shape(x), [1, 2]) is the constant [3, 4] though N is dynamic; [0, 1] is not."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "idx"], ["d"], axis=0),
        helper.make_node("Concat", ["m1", "d"], ["t"], axis=0),
        helper.make_node("Reshape", ["x", "t"], ["y"]),
    ]
    inits = {"idx": np.array(idx, np.int64), "m1": np.array([-1])}
    model = make_model(nodes, {"x": ["N", 3, 4]}, {"y": None}, inits, opset=OPSET, ir_version=None)
    out, _ = run_passes(model, [PassSpec("fold-constants")], PassContext(opset=OPSET))
    assert ([n.op_type for n in out.graph.node] == ["Reshape"]) == folds
    if folds:
        target = next(i for i in out.graph.initializer if i.name == out.graph.node[0].input[1])
        assert numpy_helper.to_array(target).tolist() == [-1, 3, 4]
