"""The search's calibration and validation data never share a sample."""

from __future__ import annotations

import numpy as np
import pytest

from converter.core.errors import InvalidInputError
from converter.core.model_io import load_model
from converter.demos.models import DEMOS, decoder_lm_feeds
from converter.pipelines.budget.data import disjoint, search_data
from converter.pipelines.calibration_source import CONVERT_BATCHES
from converter.pipelines.export import export_model


def test_decoder_lm_stream_is_consecutive_windows_whatever_the_batch_size():
    by4 = np.concatenate([f["input_ids"] for f in decoder_lm_feeds(4, 4)])
    by8 = np.concatenate([f["input_ids"] for f in decoder_lm_feeds(2, 8)])
    assert np.array_equal(by4, by8) and len({row.tobytes() for row in by4}) == 16


@pytest.mark.parametrize("demo", ["decoder-lm", "minilm"])
def test_calibration_and_validation_are_disjoint(tmp_path, demo):
    spec = DEMOS[demo]()
    model = load_model(export_model(spec, tmp_path / "m.onnx").path)
    data = search_data(model, spec, verify_batches=2, batch_size=4, val_samples=32)
    assert sum(len(f["input_ids"]) for f in data.calib) == CONVERT_BATCHES * 4
    assert sum(len(f["input_ids"]) for f in data.val) == 32
    assert disjoint(data.calib, data.val)
    if demo == "decoder-lm":  # windows of one text: disjoint bytes, not just distinct rows
        verify = np.concatenate([f["input_ids"] for f in decoder_lm_feeds(2, 4)])
        calib, val = (np.concatenate([f["input_ids"] for f in part]) for part in (data.calib, data.val))
        stream = np.concatenate([f["input_ids"] for f in decoder_lm_feeds(2 + CONVERT_BATCHES + 8, 4)])
        assert np.array_equal(np.concatenate([verify, calib, val]), stream)


def test_overlap_is_detected_and_padding_ignored():
    a = {"input_ids": np.array([[5, 6, 7, 0], [8, 9, 0, 0]])}
    b = {"input_ids": np.array([[8, 9]])}  # the second sample of `a`, padded differently
    c = {"input_ids": np.array([[1, 2]])}
    assert not disjoint([a], [b]) and disjoint([a], [c])


def test_a_model_without_sample_data_is_refused(tmp_path):
    from tests.quant_graphs import mlp_stack

    with pytest.raises(InvalidInputError, match="no sample data of its own"):
        search_data(mlp_stack(), None, 2, 4, 16)
    with pytest.raises(InvalidInputError, match="validation samples"):
        search_data(mlp_stack(), None, 2, 4, 0)
