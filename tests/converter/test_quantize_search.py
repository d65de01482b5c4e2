"""quantize's auto search: every alpha with the first observer, then the other observers at the best alpha."""

from __future__ import annotations

import onnx

from converter import api
from converter.pipelines.quantize import ALPHAS
from tests.quant_graphs import attention_like, calibration


def test_coordinate_search_scores_alphas_then_observers_and_keeps_the_best(tmp_path):
    model = attention_like(outlier=20.0)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    result = api.quantize(path, tmp_path / "q.onnx", calib=calibration(model, batches=4, rows=8))
    table = result.report["search"]["table"]
    alphas = [None, *ALPHAS]
    first, second = table[: len(alphas)], table[len(alphas) :]
    assert [row["smoothquant_alpha"] for row in first] == alphas and {row["method"] for row in first} == {"minmax"}
    best_alpha = min(first, key=lambda row: row["drop"])["smoothquant_alpha"]
    assert [row["method"] for row in second] == ["percentile", "entropy", "mse"]
    assert {row["smoothquant_alpha"] for row in second} == {best_alpha}
    chosen = min(table, key=lambda row: row["drop"])
    assert (result.report["smoothquant_alpha"], result.report["method"]) == (
        chosen["smoothquant_alpha"],
        chosen["method"],
    )
