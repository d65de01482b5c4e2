"""fold-pad: onnxruntime outputs before/after on random inputs, rejections, properties."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from passes.base import PassContext
from passes.manager import PassRecord, PassSpec, run_passes
from tests.onnx_helpers import first_output, make_model


def _model(nodes, x_shape: list, inits: dict[str, np.ndarray], opset: int = 17, extra_inputs=()) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape), *extra_inputs]
    return make_model(nodes, inputs, {"y": None}, inits, opset=opset, name="pad")


def _pad_node(pads: list[int], form: str = "input", **attrs) -> tuple[onnx.NodeProto, dict[str, np.ndarray]]:
    """Pad x -> p, with pads as an attribute (opset < 11), an input, or an input plus axes."""
    if form == "attribute":
        return helper.make_node("Pad", ["x"], ["p"], name="pad", pads=pads, **attrs), {}
    if form == "axes":  # opset 18: pads for the spatial axes only, named by negative axes
        rank = len(pads) // 2
        spatial = pads[2:rank] + pads[rank + 2 :]
        axes = np.arange(-(rank - 2), 0, dtype=np.int64)
        inits = {"pads": np.array(spatial, np.int64), "axes": axes}
        return helper.make_node("Pad", ["x", "pads", "", "axes"], ["p"], name="pad", **attrs), inits
    inits = {"pads": np.array(pads, np.int64), "zero": np.array(0.0, np.float32)}
    return helper.make_node("Pad", ["x", "pads", "zero"], ["p"], name="pad", **attrs), inits


def _fold(model: onnx.ModelProto) -> tuple[onnx.ModelProto, PassRecord]:
    out, records = run_passes(model, [PassSpec("fold-pad")], PassContext(opset=17))
    return out, records[0]


def _check_folded(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Fold, then: same outputs, fewer nodes, no Pad left, and a second run changes nothing."""
    out, record = _fold(model)
    # no onnxruntime fusions: compare the graphs as written
    after, before = first_output(out, feeds, optimize=False), first_output(model, feeds, optimize=False)
    assert after.shape == before.shape
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(before).max())))
    assert record.changed.get("pad_folded", 0) >= 1, record.rejected
    assert len(out.graph.node) < len(model.graph.node)
    assert "Pad" not in [n.op_type for n in out.graph.node]
    assert _fold(out)[1].changed == {}
    return out


def _rejected(model: onnx.ModelProto) -> str:
    out, record = _fold(model)
    assert record.changed == {} and "Pad" in [n.op_type for n in out.graph.node]
    assert record.rejected and record.rejected[0]["node"] == "pad"
    return record.rejected[0]["reason"]


def _conv(rng, c_in: int = 4, c_out: int = 6, k: int = 3, group: int = 1, **attrs):
    w = rng.standard_normal((c_out, c_in // group, k, k)).astype(np.float32)
    return helper.make_node("Conv", ["p", "W"], ["y"], name="conv", group=group, **attrs), {"W": w}


def _x(rng, shape=(2, 4, 7, 7)) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal(shape).astype(np.float32)}


@pytest.mark.parametrize("form, opset", [("input", 17), ("attribute", 10), ("axes", 18)])
def test_pad_into_conv(form, opset):
    rng = np.random.default_rng(opset)
    pad, pad_inits = _pad_node([0, 0, 1, 0, 0, 0, 2, 1], form)  # asymmetric "same" padding
    conv, inits = _conv(rng, group=2, pads=[1, 0, 0, 1], strides=[2, 1])
    out = _check_folded(_model([pad, conv], [2, 4, 7, 7], {**pad_inits, **inits}, opset), _x(rng))
    assert helper.get_attribute_value(next(a for a in out.graph.node[0].attribute if a.name == "pads")) == [
        2,
        0,
        2,
        2,
    ]


def test_pad_into_valid_conv_and_constant_node_pads():
    rng = np.random.default_rng(1)
    pads = helper.make_node("Constant", [], ["pads"], value=numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1])))
    pad = helper.make_node("Pad", ["x", "pads"], ["p"], name="pad")
    conv, inits = _conv(rng, auto_pad="VALID")
    _check_folded(_model([pads, pad, conv], [2, 4, 7, 7], inits), _x(rng))


def test_pad_into_average_pool_counting_pads():
    rng = np.random.default_rng(2)
    pad, inits = _pad_node([0, 0, 1, 0, 0, 0, 0, 1])
    pool = helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[3, 2], count_include_pad=1, strides=[2, 2])
    _check_folded(_model([pad, pool], [2, 4, 7, 7], inits), _x(rng))


def test_pad_chain_folds_in_one_run():
    rng = np.random.default_rng(3)
    pads1 = numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64), "pads1")
    pads2 = numpy_helper.from_array(np.array([0, 0, 0, 2, 0, 0, 1, 0], np.int64), "pads2")
    nodes = [
        helper.make_node("Pad", ["x", "pads1"], ["q"], name="pad1"),
        helper.make_node("Pad", ["q", "pads2"], ["p"]),
    ]
    conv, inits = _conv(rng)
    model = _model([*nodes, conv], [2, 4, 7, 7], inits)
    model.graph.initializer.extend([pads1, pads2])
    assert len(_check_folded(model, _x(rng)).graph.node) == 1


@pytest.mark.parametrize(
    "pads, attrs, conv_attrs, expected",
    [
        ([0, 0, 1, 1, 0, 0, 1, 1], {"mode": "reflect"}, {}, "mode is 'reflect'"),
        ([0, 0, 1, 1, 0, 0, 1, 1], {"mode": "edge"}, {}, "mode is 'edge'"),
        ([0, 1, 1, 1, 0, 0, 1, 1], {}, {}, "batch or channel axis"),
        ([0, 0, -1, 1, 0, 0, 1, 1], {}, {}, "negative pads"),
        ([0, 0, 1, 1, 0, 0, 1, 1], {}, {"auto_pad": "SAME_UPPER"}, "auto_pad=SAME_UPPER"),
    ],
)
def test_rejections(pads, attrs, conv_attrs, expected):
    rng = np.random.default_rng(4)
    pad, pad_inits = _pad_node(pads, **attrs)
    conv, inits = _conv(rng, **conv_attrs)
    assert expected in _rejected(_model([pad, conv], [2, 4, 7, 7], {**pad_inits, **inits}))


def test_rejects_non_constant_pads_value_and_axes():
    rng = np.random.default_rng(5)
    conv, inits = _conv(rng)
    pad = helper.make_node("Pad", ["x", "pads_in"], ["p"], name="pad")
    pads_in = helper.make_tensor_value_info("pads_in", TensorProto.INT64, [8])
    assert "pads is not a constant" in _rejected(_model([pad, conv], [2, 4, 7, 7], inits, extra_inputs=[pads_in]))
    pad = helper.make_node("Pad", ["x", "pads", "one"], ["p"], name="pad")
    model = _model([pad, conv], [2, 4, 7, 7], {**inits, "pads": np.zeros(8, np.int64), "one": np.ones((), np.float32)})
    assert "value [1.0], not 0" in _rejected(model)
    pad = helper.make_node("Pad", ["x", "pads", "", "axes_in"], ["p"], name="pad")
    axes_in = helper.make_tensor_value_info("axes_in", TensorProto.INT64, [2])
    model = _model([pad, conv], [2, 4, 7, 7], {**inits, "pads": np.ones(4, np.int64)}, 18, [axes_in])
    assert "axes is not a constant" in _rejected(model)


def test_rejects_shared_output_and_pool_without_counted_pads():
    rng = np.random.default_rng(6)
    pad, pad_inits = _pad_node([0, 0, 1, 1, 0, 0, 1, 1])
    conv, inits = _conv(rng)
    relu = helper.make_node("Relu", ["p"], ["r"])
    model = _model([pad, conv, relu], [2, 4, 7, 7], {**pad_inits, **inits})
    model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    assert "read by 2 nodes" in _rejected(model)
    pool = helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[3, 3])
    assert "count_include_pad=0" in _rejected(_model([pad, pool], [2, 4, 7, 7], pad_inits))
    pool = helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[2, 2], count_include_pad=1, pads=[1, 0, 0, 0])
    assert "would reach its kernel" in _rejected(_model([pad, pool], [2, 4, 7, 7], pad_inits))
    pool = helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[3, 3], count_include_pad=1, ceil_mode=1)
    assert "ceil_mode=1" in _rejected(_model([pad, pool], [2, 4, 7, 7], pad_inits))


@st.composite
def pad_cases(draw):
    op = draw(st.sampled_from(["Conv", "AveragePool"]))
    form = draw(st.sampled_from(["input", "attribute", "axes"]))
    group = draw(st.sampled_from([1, 2, 4]))
    channels = group * draw(st.integers(1, 4 // group))
    k = draw(st.integers(1, 3))
    spatial = draw(st.integers(4, 8))
    max_pad = 2 if op == "Conv" else k - 1  # onnxruntime wants pooling pads below the kernel
    own = draw(st.lists(st.integers(0, max_pad), min_size=4, max_size=4))
    extra = draw(st.lists(st.integers(0, 2), min_size=4, max_size=4))
    if op == "AveragePool":
        extra = [min(e, max_pad - o) for e, o in zip(extra, own, strict=True)]
    return (
        op,
        form,
        group,
        channels,
        k,
        spatial,
        own,
        extra,
        draw(st.integers(1, 2)),
        draw(st.integers(0, 2**32 - 1)),
    )


@settings(max_examples=200, deadline=None)
@given(pad_cases())
def test_property_pad_fold(case):
    op, form, group, channels, k, spatial, own, extra, stride, seed = case
    rng = np.random.default_rng(seed)
    pads = [0, 0, extra[0], extra[1], 0, 0, extra[2], extra[3]]
    pad, inits = _pad_node(pads, form)
    if op == "Conv":
        node, conv_inits = _conv(rng, channels, channels, k, group, pads=own, strides=[stride] * 2)
        inits |= conv_inits
    else:
        node = helper.make_node(
            op, ["p"], ["y"], kernel_shape=[k, k], pads=own, strides=[stride] * 2, count_include_pad=1
        )
    opset = {"attribute": 10, "input": 17, "axes": 18}[form]
    shape = (1, channels, spatial, spatial + 1)
    _check_folded(_model([pad, node], list(shape), inits, opset), _x(rng, shape))


@pytest.mark.slow
def test_efficientnet_lite0_same_padding_folds(tmp_path):
    """The real case: 17 'same' Pad nodes whose pads come from a shape subgraph."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    from converter.pipelines.model_ref import resolve_spec

    spec = resolve_spec("efficientnet-lite0")
    path = tmp_path / "eff.onnx"
    image = spec.sample_feeds(1, 2)[0]["image"]
    torch.onnx.export(
        spec.module(),
        (torch.from_numpy(image),),
        str(path),
        dynamo=False,
        do_constant_folding=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}},
    )
    model = onnx.load(str(path))
    assert sum(n.op_type == "Pad" for n in model.graph.node) == 17
    specs = [PassSpec("cleanup"), PassSpec("fold-constants"), PassSpec("fold-pad"), PassSpec("cleanup")]
    out, records = run_passes(model, specs, PassContext(opset=17))
    assert records[2].changed == {"pad_folded": 17} and not records[2].rejected
    assert sum(n.op_type == "Pad" for n in out.graph.node) == 0
    feeds = {"image": image}
    after, before = first_output(out, feeds, optimize=False), first_output(model, feeds, optimize=False)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
