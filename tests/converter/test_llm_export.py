"""module:factory export of a Llama-shaped decoder: the profile's varying dims dynamic, readable
output names, and the ONNX equal to torch at sequence lengths other than the traced one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from converter import api
from converter.core.errors import InvalidInputError
from converter.core.profiles import ShapeProfile
from converter.pipelines.model_ref import dynamic_axes_of
from tests.onnx_helpers import first_output

PROFILE = {"input_ids": ShapeProfile((1, 8), (1, 32), (2, 64))}


def test_dims_that_vary_in_the_profile_are_dynamic_and_shared():
    axes = dynamic_axes_of(
        {
            "input_ids": ShapeProfile((1, 8), (1, 32), (4, 64)),
            "attention_mask": ShapeProfile((1, 8), (1, 32), (4, 64)),
            "image": ShapeProfile((1, 3, 224, 224), (1, 3, 224, 224), (1, 3, 224, 224)),
            "boxes": ShapeProfile((1, 1, 4), (1, 5, 4), (1, 9, 4)),
        }
    )
    # axis 1 varies over two ranges (text, boxes): each input names its own
    assert axes["input_ids"] == {0: "batch", 1: "input_ids_dim1"}
    assert axes["attention_mask"] == {0: "batch", 1: "attention_mask_dim1"}
    assert axes["image"] == {0: "batch"}  # only the batch, as for every static shape
    assert axes["boxes"] == {0: "batch", 1: "boxes_dim1"}


def test_same_range_shares_one_name():
    same = ShapeProfile((1, 8), (1, 32), (4, 64))
    assert dynamic_axes_of({"a": same, "b": same}) == {"a": {0: "batch", 1: "dim1"}, "b": {0: "batch", 1: "dim1"}}


def test_llama_factory_exports_with_dynamic_sequence_and_named_logits(tmp_path):
    out = tmp_path / "new" / "llama.onnx"
    api.export("scripts.llama_spec:tiny", out, shapes=PROFILE, dtypes={"input_ids": "int64"}, output_names=["logits"])
    model = onnx.load(str(out))
    (inp,), (output,) = model.graph.input, model.graph.output
    assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", "dim1"]
    assert output.name == "logits"
    assert [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim] == [
        "logits_dim0",
        "logits_dim1",
        256,
    ]
    from scripts.llama_spec import tiny

    module = tiny()
    for length in (8, 50):  # traced at 32: other lengths must work too
        ids = np.random.default_rng(length).integers(0, 256, (2, length))
        got = first_output(model, {"input_ids": ids})
        with torch.no_grad():
            want = module(torch.from_numpy(ids)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_output_names_must_match_the_outputs(tmp_path):
    with pytest.raises(InvalidInputError, match="has 1 output"):
        api.export(
            "scripts.llama_spec:tiny",
            tmp_path / "m.onnx",
            shapes=PROFILE,
            dtypes={"input_ids": "int64"},
            output_names=["a", "b"],
        )
    assert not (tmp_path / "m.onnx").exists()


def test_a_bare_modules_output_is_named_output(tmp_path):
    api.export("tests.tiny_models:plain_mlp", tmp_path / "m.onnx", shapes={"x": (2, 16)})
    assert [o.name for o in onnx.load(str(tmp_path / "m.onnx")).graph.output] == ["output"]
