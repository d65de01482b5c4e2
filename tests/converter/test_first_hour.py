"""What a new user meets in the first hour (issue: a --help example that failed, --static
files trtforge itself refused, build asking for shapes export already knew, mistakes
caught minutes late, checks that passed by accident, silent synthetic data)."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from rich.console import Console

from converter import api
from converter.cli.main import main
from converter.core.errors import ExitCode, InvalidInputError, UnsupportedError
from converter.core.metadata import PROFILES, metadata_value
from converter.core.profiles import ShapeProfile, profiles_from_json, profiles_to_json
from converter.demos.sample_data import fit_feeds
from converter.pipelines.export import exporter_message
from converter.pipelines.report import print_summary
from tests.conftest import TINY
from tests.onnx_helpers import make_model


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _dims(path, index=0):
    value_info = onnx.load(str(path), load_external_data=False).graph.input[index]
    return [d.dim_value or d.dim_param for d in value_info.type.tensor_type.shape.dim]


# --- export: dynamo on both image and text demos, --static, --shapes, profiles recorded ---


@pytest.mark.slow
def test_dynamo_export_of_efficientnet_verifies_against_torch(tmp_path):
    """The forward's argument is `inputs`, trtforge's input name `image`: dims go positionally."""
    path = tmp_path / "effnet.onnx"
    api.export("efficientnet-lite0", path, exporter="dynamo")
    assert _dims(path)[0] != 1 and _dims(path)[1:] == [3, 224, 224]  # the batch stays dynamic
    assert api.verify("efficientnet-lite0", [str(path)]).passed


@pytest.mark.slow
def test_static_minilm_export_is_batch_one_and_verifies(tmp_path):
    path = tmp_path / "static.onnx"
    api.export("minilm", path, dynamic=False)
    assert _dims(path) == [1, 64]  # batch 1 at the demo's usual sequence length, not the trace batch
    result = api.verify("minilm", [str(path)])
    assert result.passed and result.samples > 0  # real sentences fitted to [1, 64]


def test_shapes_fix_a_static_export_and_are_recorded_as_the_build_profile(tmp_path):
    static = tmp_path / "static.onnx"
    api.export(TINY, static, shapes={"image": (2, 3, 32, 32)}, dynamic=False)
    assert _dims(static) == [2, 3, 32, 32]
    profile = ShapeProfile((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))
    dynamic = tmp_path / "dynamic.onnx"
    api.export(TINY, dynamic, shapes={"image": profile})
    recorded = profiles_from_json(metadata_value(onnx.load(str(dynamic)), PROFILES))
    assert recorded == {"image": profile}


def test_shapes_naming_an_input_the_model_lacks_are_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="no such input"):
        api.export(TINY, tmp_path / "m.onnx", shapes={"imgae": (1, 3, 32, 32)})
    assert not (tmp_path / "m.onnx").exists()


def test_build_uses_the_profile_export_recorded(tmp_path):
    path = tmp_path / "tiny.onnx"
    api.export(TINY, path, shapes={"image": ShapeProfile((1, 3, 32, 32), (2, 3, 32, 32), (4, 3, 32, 32))})
    result = api.build(path, tmp_path / "tiny.engine", backend="tensorrt-rtx", target_gpus=["sm86"])
    assert result.sidecar["profiles"]["image"] == {"min": [1, 3, 32, 32], "opt": [2, 3, 32, 32], "max": [4, 3, 32, 32]}


def test_missing_profiles_are_named_together(tmp_path):
    graph = make_model(
        [onnx.helper.make_node("Add", ["a", "b"], ["y"])],
        inputs={"a": ["n", 4], "b": ["n", 4]},
        outputs={"y": ["n", 4]},
    )
    path = tmp_path / "two.onnx"
    onnx.save(graph, str(path))
    with pytest.raises(InvalidInputError) as info:
        api.build(path, tmp_path / "two.engine", backend="tensorrt-rtx", target_gpus=["sm86"])
    assert "--shapes a:" in str(info.value) and "--shapes b:" in str(info.value)


def test_exporter_messages_are_one_clean_line():
    exc = RuntimeError("\x1b[31mFailed to export the model\x1b[0m\nplease report a bug to PyTorch\ndetails")
    assert exporter_message(exc) == "RuntimeError: Failed to export the model"
    assert exporter_message(ValueError("Please file an issue at github.com/pytorch/pytorch")) == "ValueError"


def test_fit_feeds_pads_truncates_and_rebatches():
    ids = np.arange(2 * 5).reshape(2, 5)
    fitted = fit_feeds([{"ids": ids}], {"ids": [1, 8]})
    assert [f["ids"].shape for f in fitted] == [(1, 8), (1, 8)]
    assert fitted[0]["ids"].tolist() == [[0, 1, 2, 3, 4, 0, 0, 0]]  # right-padded with zeros
    assert fit_feeds([{"ids": ids}], {"ids": [4, 3]})[0]["ids"].shape == (4, 3)  # rows repeated, truncated


def test_profiles_json_round_trips_and_ignores_garbage():
    profiles = {"x": ShapeProfile((1, 2), (2, 2), (4, 2))}
    assert profiles_from_json(profiles_to_json(profiles)) == profiles
    assert profiles_from_json("{not json") == {} and profiles_from_json('{"x": {"min": 3}}') == {}


# --- mistakes caught before any work ---


def test_unbuildable_target_fails_before_export(tmp_path):
    start = time.perf_counter()
    with pytest.raises(UnsupportedError, match="sm90"):
        api.convert(TINY, tmp_path / "out", target_gpus=["sm90"])
    assert time.perf_counter() - start < 1.0
    assert not (tmp_path / "out").exists()


def test_recipe_pass_typo_fails_before_export(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes: [cleanup, fold-constnts]\n")
    start = time.perf_counter()
    with pytest.raises(InvalidInputError, match="did you mean 'fold-constants'"):
        api.convert(TINY, tmp_path / "out", recipe=recipe)
    assert time.perf_counter() - start < 1.0


def test_drop_blocks_refuses_an_unbuildable_target_before_the_search(tmp_path):
    with pytest.raises(UnsupportedError, match="sm90"):
        api.drop_blocks("decoder-lm", tmp_path / "p.onnx", target_gpus=["sm90"])


@pytest.mark.parametrize("bad", ["nan", "-1", "inf"])
def test_nan_or_negative_tolerances_are_usage_errors(tiny_onnx, bad):
    result = invoke("verify", tiny_onnx, tiny_onnx, "--atol", bad)
    assert result.exit_code == ExitCode.USAGE and "--atol" in result.output


def test_min_cosine_above_one_is_a_usage_error(tiny_onnx):
    result = invoke("verify", tiny_onnx, tiny_onnx, "--min-cosine", "1.5")
    assert result.exit_code == ExitCode.USAGE


def test_batch_size_zero_is_a_usage_error(tmp_path):
    result = invoke("quantize", TINY, "-o", tmp_path / "q.onnx", "--batch-size", "0")
    assert result.exit_code == ExitCode.USAGE and not (tmp_path / "q.onnx").exists()


# --- checks that passed by accident ---


def test_tolerance_for_an_output_the_model_lacks_is_a_usage_error(tiny_onnx):
    result = invoke("verify", tiny_onnx, tiny_onnx, "--min-cosine", "logit:0.9999999")
    assert result.exit_code == ExitCode.USAGE
    assert "logit" in result.output and "logits" in result.output  # names the typo and the real outputs


def test_verify_after_precision_uses_fp16_tolerances(tiny_onnx):
    result = api.verify(str(tiny_onnx), [], passes=["fold", "precision"])
    after_precision = next(c for c in result.comparisons if c.candidate == "after precision")
    assert after_precision.tolerances["atol"] == pytest.approx(5e-2)
    first = result.comparisons[0].tolerances
    assert first["atol"] == pytest.approx(1e-4)  # fp32 before the graph is lowered
    assert result.passed


def test_a_pass_that_changes_nothing_reuses_the_last_check(tiny_onnx, monkeypatch):
    """Each check runs the graph in onnxruntime (10 s a pass on a 1.1B model): a pass that changed
    nothing hands the manager's same graph on, and its check is the previous one, renamed."""
    from converter.verification.reference import Reference

    calls = []
    original = Reference.compare_onnx

    def counting(self, model, label, tol):
        calls.append(label)
        return original(self, model, label, tol)

    monkeypatch.setattr(Reference, "compare_onnx", counting)
    result = api.verify(str(tiny_onnx), [], passes=["fold", "fold-pad", "fold-batchnorm"])
    stages = [c for c in result.comparisons if c.candidate.startswith("after ")]
    assert [c.candidate for c in stages[-2:]] == ["after fold-pad", "after fold-batchnorm"]  # still reported
    assert "after fold-pad" not in calls and "after fold-batchnorm" not in calls  # not run again
    assert stages[-1].outputs == stages[-3].outputs and result.passed


def test_synthetic_inputs_are_flagged_in_the_terminal_summary(tmp_path):
    graph = make_model(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        inputs={"x": [2, 4]},
        outputs={"y": [2, 4]},
    )
    path = tmp_path / "plain.onnx"
    onnx.save(graph, str(path))
    result = invoke("verify", path, path)
    assert result.exit_code == 0
    assert "synthetic random inputs" in result.output
    assert "identical" in result.output  # SNR of equal outputs, not 1000000000.0


def test_markup_in_model_strings_is_printed_literally():
    report = json.loads(json.dumps({"command": "verify", "verification": [], "passes": [], "stages": {}}))
    report["verification"] = [
        {
            "reference": "[/red]",
            "candidate": "[link=http://x]y[/link]",
            "outputs": [
                {
                    "name": "[bold]out",
                    "passed": False,
                    "failure": "[/]",
                    "max_abs": 1.0,
                    "mean_abs": 1.0,
                    "cosine": 0.5,
                    "snr_db": 3.0,
                    "top1_agreement": None,
                }
            ],
        }
    ]
    console = Console(record=True, width=200)
    print_summary(report, console)
    text = console.export_text()
    assert "[link=http://x]y[/link]" in text and "[bold]out" in text


def test_bf16_and_causal_graphs_print_no_library_warnings(tmp_path, tiny_onnx, capfd):
    import warnings

    api.optimize(tiny_onnx, tmp_path / "bf16.onnx", passes=["fold"], precision="bf16")
    from converter.verification.localize import _layer_error

    node = onnx.helper.make_node("Add", ["a", "b"], ["m"], name="mask")
    mask = np.array([0.0, -np.inf], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value in subtract" on -inf - -inf
        _layer_error(0, "m", node, mask, mask.copy(), api.Tolerances.for_precision("fp32"))
    captured = capfd.readouterr()
    assert "[W]" not in captured.err + captured.out
