"""int8 weight-only (W8A16) and the 8-bit tier of a 4-bit weight-only budget."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from converter.core.ort_session import cpu_session
from passes.base import PassContext
from passes.quant.quantize import Quantize
from tests.quant_graphs import calibration, feeds_for, mlp_stack


def test_int8_weight_only_is_per_output_channel_and_close():
    model = mlp_stack(layers=2, width=64)
    out, result = Quantize(mode="int8-wo").run_model(model, PassContext(opset=17))
    dqs = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 2 and not any(n.op_type == "QuantizeLinear" for n in out.graph.node)  # weights only
    scales = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    assert all(scales[n.input[1]].shape == (64,) for n in dqs)  # one scale per output channel (axis 1)
    assert all(a.i == 1 for n in dqs for a in n.attribute if a.name == "axis")
    layers = result.details["weight_only"]
    assert {r["bits"] for r in layers.values()} == {8} and max(r["error"] for r in layers.values()) < 1e-3
    feeds = feeds_for(model, 1)[0]
    want, got = (cpu_session(m).run(None, feeds)[0] for m in (model, out))
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()


@pytest.mark.parametrize("keep_bits", [16, 8])
def test_a_4_bit_budget_keeps_its_sensitive_layers_at_16_or_8_bits(keep_bits):
    model = mlp_stack(layers=3, width=64)
    pass_ = Quantize(mode="int4-wo", block_size=32, max_cosine_drop=1e-7, sensitivity_samples=8, keep_bits=keep_bits)
    mixed, result = pass_.run_model(model, PassContext(opset=17, calibration=calibration(model)))
    kept = result.details["mixed_precision"]["kept_in_high_precision"]
    assert kept  # a budget this tight keeps some layer out of 4 bits
    codes = {
        n.input[0]: next(i for i in mixed.graph.initializer if i.name == n.input[0]).data_type
        for n in mixed.graph.node
        if n.op_type == "DequantizeLinear"
    }
    int8 = [name for name, kind in codes.items() if kind == onnx.TensorProto.INT8]
    assert len(int8) == (len(kept) if keep_bits == 8 else 0)  # 8: the kept layers are int8 weight-only
    with pytest.raises(ValueError, match="keep_bits 8: 16, or 8"):
        Quantize(mode="int8", keep_bits=8)
