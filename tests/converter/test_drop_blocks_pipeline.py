"""The drop-blocks use case through converter.api: data, errors, and the engine build targets."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from converter import api
from converter.core.errors import InvalidInputError
from converter.pipelines import drop_blocks as pipeline
from passes.blocks.config import DropConfig
from passes.blocks.discovery import find_blocks
from tests.transformer_models import decoder_feeds, exported


def test_named_units_without_data_are_removed_and_not_scored(tmp_path):
    out = tmp_path / "pruned.onnx"
    result = api.drop_blocks(exported("decoder"), out, drop=["attn1", "block2"], build=False)
    assert result.passed and result.path == out and result.report_path.exists()
    assert result.removed == ["attn1", "block2"] and result.report["scores"] == {}
    assert "selection" not in result.report and "no real sample data" in result.report["data"]
    assert len(find_blocks(onnx.load(out)).blocks) == 2


def test_chosen_units_are_measured_on_the_written_onnx(tmp_path):
    calib, val = tmp_path / "calib.npz", tmp_path / "val.npz"
    np.savez(calib, **decoder_feeds(1, 8)[0])
    np.savez(val, **decoder_feeds(1, 8, offset=5000)[0])
    result = api.drop_blocks(
        exported("decoder"),
        tmp_path / "p.onnx",
        config=DropConfig(method="oneshot", remove=1),
        calib_inputs=calib,
        val_inputs=val,
        build=False,
    )
    report = result.report
    assert report["selection"]["method"] == "oneshot" and len(result.removed) == 1
    assert report["config"] == dict(DropConfig(method="oneshot", remove=1).__dict__)
    written, scored = report["validation"]["written_onnx"], report["validation"]["after"]
    assert written["ppl"] == pytest.approx(scored["ppl"], rel=1e-5)
    assert (tmp_path / "p.drop" / "scores.png").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"config": DropConfig(remove=1)}, "no real sample data named by the model"),
        ({"drop": ["block9"]}, "drop-blocks: unknown block/sub-layer name"),
    ],
)
def test_input_errors_are_one_line_and_write_nothing(tmp_path, options, message):
    out = tmp_path / "o.onnx"
    with pytest.raises(InvalidInputError, match=message):
        api.drop_blocks(exported("decoder"), out, build=False, **options)
    assert not out.exists()


def test_a_perplexity_budget_on_an_encoder_fails_before_scoring(tmp_path, monkeypatch):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input_ids=np.zeros((2, 8), np.int64), attention_mask=np.ones((2, 8), np.int64))
    monkeypatch.setattr(pipeline, "score_units", lambda *a, **k: pytest.fail("scored before the check"))
    with pytest.raises(InvalidInputError, match="language model"):
        api.drop_blocks(
            exported("bert"), tmp_path / "o.onnx", config=DropConfig(max_ppl_increase=0.1), calib_inputs=calib
        )


def test_engines_build_for_the_default_targets_of_every_command(tmp_path, monkeypatch):
    """drop-blocks used to build for sm89 only; without --target-gpu it now leaves the backend its defaults."""
    import converter.backends as backends

    seen = []

    class Engine:
        sidecar = {"engine_bytes": 1, "targets": ["sm86", "sm89", "sm120"]}

    class Backend:
        def version(self):
            return "fake"

        def parse(self, path):
            return type("Parsed", (), {"num_layers": 3})()

        def build(self, path, engine_path, config):
            seen.append(list(config.target_gpus))
            return Engine()

    monkeypatch.setattr(backends, "get_backend", lambda name: Backend())
    for name in ("a.onnx", "b.onnx"):  # the build configs read each graph's inputs
        onnx.save(onnx.load(exported("bert"), load_external_data=False), tmp_path / name)
    info = pipeline._tensorrt(tmp_path / "a.onnx", tmp_path / "b.onnx", {}, [], build=True)
    assert seen == [[], []] and info["targets"] == ["sm86", "sm89", "sm120"]
    pipeline._tensorrt(tmp_path / "a.onnx", tmp_path / "b.onnx", {}, ["sm120"], build=True)
    assert seen[-1] == ["sm120"]
