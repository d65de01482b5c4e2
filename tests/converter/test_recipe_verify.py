from __future__ import annotations

import json

import numpy as np
import pytest

from converter.core.errors import InvalidInputError
from converter.pipelines.recipe import Recipe, load_recipe
from converter.verification.compare import compare_results, output_metrics
from converter.verification.tolerances import Tolerances


def test_recipe_yaml_and_json_roundtrip(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "passes: [cleanup, {name: precision, options: {target: fp16}}]\nprecision: fp16\n"
        "target_gpus: [sm89]\nshapes: {x: {min: [1, 4], opt: [2, 4], max: [8, 4]}}\ntolerances: {atol: 0.1}\n"
    )
    recipe = load_recipe(tmp_path / "r.yaml")
    assert [p.name for p in recipe.passes] == ["cleanup", "precision"] and recipe.passes[1].options == {
        "target": "fp16"
    }
    assert recipe.shapes["x"].max == (8, 4) and recipe.tolerances == {"atol": 0.1}
    (tmp_path / "r.json").write_text(json.dumps({"recipe": recipe.to_dict()}))  # a report carries its recipe
    assert load_recipe(tmp_path / "r.json").to_dict() == recipe.to_dict()


def test_fp16_recipe_appends_precision_pass_once():
    names = [p.name for p in Recipe(precision="fp16").effective_passes()]
    assert names == ["fold", "precision"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("precision: fp8\n", "precision 'fp8'"),
        ("- a\n", "mapping"),
        ("tolerances: {btol: 1}\n", "btol"),
        ("passes: [3]\n", "pass must be"),
    ],
)
def test_recipe_errors_name_the_problem(tmp_path, text, message):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(InvalidInputError, match=message):
        load_recipe(tmp_path / "r.yaml")


def test_metrics_identical_and_perturbed():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((8, 10)).astype(np.float32)
    tol = Tolerances.for_precision("fp32")
    same = output_metrics("y", ref, ref.copy(), tol, classify=True)
    assert same.passed and same.max_abs == 0 and same.cosine == pytest.approx(1.0) and same.top1_agreement == 1.0
    noisy = output_metrics("y", ref, ref + 0.05, tol, classify=True)
    assert not noisy.passed and "atol" in noisy.failure and noisy.snr_db < 40


def test_metrics_catch_nan_and_shape_mismatch():
    tol = Tolerances.for_precision("fp32")
    ref = np.ones((2, 3), np.float32)
    assert "non-finite" in output_metrics("y", ref, np.full((2, 3), np.nan, np.float32), tol, False).failure
    assert "shape" in output_metrics("y", ref, np.ones((3, 2), np.float32), tol, False).failure


def test_comparison_matches_outputs_by_position_when_names_differ():
    ref = {"output_0": np.ones((2, 2), np.float32)}
    comp = compare_results("torch", ref, "onnx", {"logits": np.ones((2, 2), np.float32)}, Tolerances(1e-5, 0, 0.99))
    assert comp.passed and comp.outputs[0].name == "output_0"
