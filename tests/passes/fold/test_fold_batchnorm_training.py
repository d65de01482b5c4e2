"""fold-batchnorm on BatchNormalization in training form: kept (it normalizes with batch statistics), exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from passes.base import PassContext
from passes.manager import PassSpec, run_passes
from tests.onnx_helpers import first_output
from tests.passes.fold.test_fold_batchnorm import CTX13, _assert_close, _bn, _bn_node, _model, _rejected


def _training_form_model(rng: np.random.Generator, read_saved: bool = False) -> onnx.ModelProto:
    """Conv -> BN as torch.onnx.export writes a model in training mode before opset 14: the
    BN has its 4 statistics outputs (running mean/var, saved mean/var), unused, and no
    training_mode attribute; the outputs alone make it normalize with batch statistics."""
    inits = {"W": rng.standard_normal((4, 4, 3, 3)).astype(np.float32), **_bn(rng, 4)}
    bn = _bn_node("c", "y")
    bn.output.extend(["run_mean", "run_var", "saved_mean", "saved_var"])
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), bn]
    model = _model(nodes, {"x": [2, 4, 8, 8]}, inits, opset=13)
    if read_saved:
        model.graph.node.append(helper.make_node("Identity", ["saved_mean"], ["m"]))
        model.graph.output.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, None))
    return model


def test_rejects_training_form_before_opset_14():
    """It is not an affine map of x: folding it would change outputs (onnxruntime uses batch stats)."""
    model = _training_form_model(np.random.default_rng(65))
    assert "training mode" in _rejected(model)


def test_training_form_bn_survives_the_fold_group_exactly():
    """The whole group on it: BN kept, opset upgraded with training_mode=1, same outputs."""
    rng = np.random.default_rng(66)
    model = _training_form_model(rng)
    feeds = {"x": rng.standard_normal((2, 4, 8, 8)).astype(np.float32)}
    out, _ = run_passes(model, [PassSpec("fold")], PassContext(opset=13))
    bn = next(n for n in out.graph.node if n.op_type == "BatchNormalization")
    assert {a.name: helper.get_attribute_value(a) for a in bn.attribute}["training_mode"] == 1
    assert len(bn.output) == 3 and out.opset_import[0].version == 20
    _assert_close(first_output(out, feeds, optimize=False), first_output(model, feeds, optimize=False))


def test_upgrade_refuses_training_bn_whose_saved_statistics_are_read():
    from converter.core.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match="saved mean/var outputs are read"):
        run_passes(_training_form_model(np.random.default_rng(67), read_saved=True), [PassSpec("upgrade-opset")], CTX13)


@pytest.mark.parametrize("opset", [13, 17])
def test_torch_export_in_training_mode_keeps_bn_and_eval_export_folds(opset):
    """torch.onnx.export of Conv+BN: in training mode the BN is kept (it normalizes with batch
    statistics, at opset 13 by its extra outputs, from 14 by training_mode=1); in eval mode it folds."""
    torch = pytest.importorskip("torch")
    import io

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
    x = torch.randn(2, 3, 8, 8)
    for training, mode in ((True, torch.onnx.TrainingMode.TRAINING), (False, torch.onnx.TrainingMode.EVAL)):
        buffer = io.BytesIO()
        net.train(training)
        torch.onnx.export(
            net,
            (x,),
            buffer,
            dynamo=False,
            opset_version=opset,
            training=mode,
            do_constant_folding=False,
            input_names=["x"],
            output_names=["y"],
        )
        model = onnx.load_from_string(buffer.getvalue())
        out, records = run_passes(model, [PassSpec("fold")], PassContext(opset=opset))
        feeds = {"x": x.numpy()}
        _assert_close(first_output(out, feeds, optimize=False), first_output(model, feeds, optimize=False))
        kept = [n.op_type for n in out.graph.node].count("BatchNormalization")
        assert kept == (1 if training else 0), (training, [r.rejected for r in records if r.name == "fold-batchnorm"])
