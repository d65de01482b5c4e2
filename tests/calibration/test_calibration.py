"""calibration/: readers and their errors, streaming statistics, observers, the cache."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from calibration.cache import calibrate, read_trt_table, write_trt_table
from calibration.data import check_batch, from_array_folder, from_feeds
from calibration.observers import amax_entropy, amax_mse, amax_percentile, compute_amax
from calibration.readers import from_image_folder, from_texts, load_calibration
from calibration.reduce import lower_bounds, reduction_nodes
from calibration.stats import BINS, TensorStats, collect_statistics
from converter.core.errors import InvalidInputError
from tests.onnx_helpers import make_model
from tests.quant_graphs import attention_like, conv_residual, feeds_for


def stats_of(*arrays) -> TensorStats:
    stats = TensorStats("t")
    for a in arrays:
        stats.update(np.asarray(a, np.float32))
    return stats


# ----------------------------------------------------------------------------- observers
def test_minmax_and_histogram_against_hand_counts():
    stats = stats_of([0.0, -1.0, 2.0, 3.0], [-4.0, 1.0])
    assert (stats.min, stats.max, stats.amax, stats.count) == (-4.0, 3.0, 4.0, 6)
    # range: the power of two above the first batch's max (4), big enough for the second
    expected, _ = np.histogram([0, 1, 2, 3, 4, 1], bins=np.linspace(0, 4, BINS + 1))
    assert stats.hist_range == 4.0
    np.testing.assert_array_equal(stats.hist, expected)


def test_histograms_merge_exactly_whatever_the_split():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-0.7, 0.7, 10_000), rng.uniform(-3.3, 3.3, 10_000)
    streamed, merged = stats_of(a, b), stats_of(a).merge(stats_of(b))
    assert streamed.hist_range == merged.hist_range == 4.0
    np.testing.assert_array_equal(streamed.hist, merged.hist)
    np.testing.assert_array_equal(stats_of(b, a).hist, streamed.hist)  # order does not matter
    assert merged.hist.sum() == 20_000


def test_percentile_is_the_hand_computed_quantile():
    values = np.arange(1, 1001, dtype=np.float32)  # |x| = 1..1000
    stats = stats_of(values)
    width = stats.hist_range / BINS
    assert abs(amax_percentile(stats, 99.0) - 990.0) <= 2 * width
    assert abs(amax_percentile(stats, 50.0) - 500.0) <= 2 * width
    assert compute_amax(stats, "minmax") == 1000.0


def test_mse_matches_a_brute_force_search_on_the_raw_values():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.uniform(-1, 1, 200_000), [100.0, -60.0]]).astype(np.float32)
    a = np.abs(values.astype(np.float64))
    grid = 100.0 * np.linspace(1 / 200, 1, 200)
    errors = [np.sum(np.where(a > c, (a - c) ** 2, np.minimum(a**2, (c / 127) ** 2 / 12))) for c in grid]
    best = grid[int(np.argmin(errors))]  # ~46 here: clip both outliers, keep resolution for the rest
    assert abs(amax_mse(stats_of(values)) - best) <= 2.0
    assert amax_mse(stats_of(values)) < 60.0
    assert amax_mse(stats_of(values[:-2])) > 0.9  # a dense uniform range is hardly clipped


def test_entropy_threshold_for_a_gaussian_and_relu_zeros():
    rng = np.random.default_rng(2)
    gauss = rng.standard_normal(200_000).astype(np.float32)
    threshold = amax_entropy(stats_of(gauss))
    assert 2.0 < threshold <= float(np.abs(gauss).max())
    relu6 = np.clip(gauss * 3, 0, 6)  # half exact zeros, a spike at 6
    assert amax_entropy(stats_of(relu6)) > 3.0


def test_non_finite_values_are_counted_not_binned():
    stats = stats_of([1.0, -np.inf, 2.0, np.nan])
    assert stats.nonfinite == 2 and stats.amax == 2.0 and stats.hist.sum() == 4


# ----------------------------------------------------------------------------- streaming collection
def test_collection_matches_numpy_and_chunking_does_not_change_it():
    model = attention_like()
    data = from_feeds(feeds_for(model, batches=6, rows=5), "test")
    big = collect_statistics(model, ["x0", "p", "x"], data, budget_mb=64)
    tiny = collect_statistics(model, ["x0", "p", "x"], data, budget_mb=1e-4)  # one tensor a session, one row a run
    assert tiny.groups == 2 and tiny.rows_per_run == 1 and big.groups == 1
    for name in ("x0", "p", "x"):
        np.testing.assert_array_equal(big.stats[name].hist, tiny.stats[name].hist)
        assert big.stats[name].amax == tiny.stats[name].amax
    x = np.concatenate([f["x"] for f in data])
    assert big.stats["x"].amax == pytest.approx(float(np.abs(x).max()))
    assert big.samples == 30 and big.batches == 6


def test_in_graph_reductions_match_the_numpy_path():
    model = attention_like()
    data = from_feeds(feeds_for(model, batches=3, rows=5), "test")
    names = ["x0", "h", "p"]
    full = collect_statistics(model, names, data, histogram=True, channels=names)
    reduced = collect_statistics(model, names, data, histogram=False, channels=names)
    assert reduced.groups == 0  # nothing but scalars and channel vectors came back
    for name in names:
        a, b = full.stats[name], reduced.stats[name]
        assert (a.min, a.max, a.count) == pytest.approx((b.min, b.max, b.count))
        np.testing.assert_allclose(a.channel_amax, b.channel_amax, rtol=1e-6)
    feeds = feeds_for(model, batches=2, rows=2)
    feeds[1]["x"][0, 0, 0] = np.inf
    flagged = collect_statistics(model, ["x0"], from_feeds(feeds), histogram=False)
    assert flagged.stats["x0"].nonfinite > 0


def test_in_graph_reductions_on_conv_activations_pool_and_use_graph_bounds():
    model = conv_residual()
    names = ["c1", "r1", "c2", "res", "logits"]
    data = from_feeds(feeds_for(model, batches=3, rows=10), "test")  # 10 rows: two reduction runs a batch
    full = collect_statistics(model, names, data, histogram=True)
    reduced = collect_statistics(model, names, data, histogram=False)
    for name in names:
        a, b = full.stats[name], reduced.stats[name]
        assert (a.max, a.count, a.amax) == pytest.approx((b.max, b.count, b.amax)), name
        assert b.min == (0.0 if name == "r1" else pytest.approx(a.min)), name  # Relu output: its bound
    nodes, plan = reduction_nodes(model, names, set(), 20)
    ops = {r.name: sorted(n.op_type for n in nodes if n.input and n.input[0] == r.name) for r in plan}
    # 4-D: max by GlobalMaxPool (onnxruntime's blocked layout), min only where nothing bounds it, no Size (8x8)
    assert ops == {
        "c1": ["GlobalMaxPool", "ReduceMin"],
        "r1": ["GlobalMaxPool"],
        "c2": ["GlobalMaxPool", "ReduceMin"],
        "res": ["GlobalMaxPool", "ReduceMin"],
        "logits": ["ReduceMax", "ReduceMin", "Size"],
    }
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(model)
    for dim, name in zip(dynamic.graph.input[0].type.tensor_type.shape.dim[2:], ("H", "W"), strict=True):
        dim.dim_param = name
    del dynamic.graph.value_info[:]
    dynamic = onnx.shape_inference.infer_shapes(dynamic)
    nodes, plan = reduction_nodes(dynamic, ["r1"], set(), 20)  # H, W symbolic: maybe empty, no pooling
    assert [n.op_type for n in nodes] == ["ReduceMax", "Size"] and plan[0].size


def test_in_graph_reductions_keep_whole_batches_that_cannot_be_split():
    """A static batch, a [1] input broadcast over the batch and an empty 4-D tensor still calibrate."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [16, 4, 5, 5])
    s = helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, [1])
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("lo", [2]), ("hi", [2]), ("ax", [2]))]
    nodes = [
        helper.make_node("Mul", ["x", "s"], ["y"]),
        helper.make_node("Relu", ["y"], ["r"]),
        helper.make_node("Slice", ["y", "lo", "hi", "ax"], ["empty"]),  # [16, 4, 0, 5]
    ]
    out = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("r", "empty")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x, s], out, consts))
    model = onnx.shape_inference.infer_shapes(model)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((16, 4, 5, 5)).astype(np.float32), "s": np.float32([2.0])} for _ in range(2)]
    full = collect_statistics(model, ["y", "r", "empty"], from_feeds(feeds, "t"), histogram=True)
    reduced = collect_statistics(model, ["y", "r", "empty"], from_feeds(feeds, "t"), histogram=False)
    assert reduced.runs == 2  # one run a batch: the batch size is part of the model
    for name in ("y", "r"):
        assert (full.stats[name].max, full.stats[name].count) == (reduced.stats[name].max, reduced.stats[name].count)
    assert reduced.stats["empty"].count == 0 and reduced.stats["empty"].nonfinite == 0


def test_lower_bounds_come_from_relu_softmax_and_constant_clip_minima():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])
    nodes = [
        helper.make_node("Relu", ["x"], ["relu"]),
        helper.make_node("Softmax", ["x"], ["softmax"]),
        helper.make_node("Clip", ["x", "zero", "six"], ["relu6"]),
        helper.make_node("Clip", ["x", "minus", "six"], ["clip_negative"]),
        helper.make_node("Clip", ["x", "", "six"], ["clip_no_min"]),
        helper.make_node("Clip", ["x", "seven", "six"], ["clip_min_above_max"]),  # all 6: not >= 7
        helper.make_node("Relu", ["x"], ["custom_relu"], domain="custom"),
        helper.make_node("Constant", [], ["six"], value=numpy_helper.from_array(np.float32(6.0))),
        helper.make_node("Abs", ["x"], ["abs"]),  # non-negative too, but not a listed op: measured
    ]
    inits = [numpy_helper.from_array(np.float32(v), n) for n, v in (("zero", 0.5), ("minus", -1.0), ("seven", 7.0))]
    outputs = ["relu", "softmax", "relu6", "clip_negative", "clip_no_min", "clip_min_above_max", "custom_relu", "abs"]
    model = make_model(nodes, [x], {o: [2, 4] for o in outputs}, inits, opset=20, ir_version=None)
    assert lower_bounds(model, outputs) == {"relu": 0.0, "softmax": 0.0, "relu6": 0.5}
    old = helper.make_graph([helper.make_node("Clip", ["x"], ["y"], min=0.0, max=6.0)], "g", [x], [], [])
    assert lower_bounds(helper.make_model(old, opset_imports=[helper.make_opsetid("", 6)]), ["y"]) == {"y": 0.0}


def test_memory_stays_bounded_over_many_batches():
    model = attention_like()
    batch = feeds_for(model, batches=1, rows=64)[0]
    one_batch = sum(v.nbytes for v in batch.values())
    many = from_feeds([batch] * 300, "repeat")  # 300 batches, ~20k samples
    tracemalloc.start()
    result = collect_statistics(model, ["x0", "h", "s", "p"], many, budget_mb=1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.samples == 300 * 64
    assert peak < 30 * one_batch  # every batch's outputs would be 300x several batches
    assert all(s.hist.shape == (BINS,) for s in result.stats.values())


# ----------------------------------------------------------------------------- readers and errors
def test_npz_folder_adds_batch_axis_rebatches_and_counts(tmp_path):
    model = attention_like()
    rng = np.random.default_rng(0)
    for i in range(5):  # single samples (no batch axis)
        np.savez(tmp_path / f"s{i}.npz", x=rng.standard_normal((8, 32)).astype(np.float32))
    np.savez(tmp_path / "z_batch.npz", x=rng.standard_normal((3, 8, 32)).astype(np.float32))
    data = from_array_folder(tmp_path, model, batch_size=4)
    assert data.count == 8 and data.num_batches == 2
    assert [b["x"].shape[0] for b in data] == [4, 4]
    data.check(model)
    assert load_calibration(tmp_path, model).count == 8


def test_npy_folder_for_single_input_models(tmp_path):
    model = conv_residual()
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", np.ones((16, 8, 8), np.float32))
    data = load_calibration(tmp_path, model, batch_size=2)
    assert data.count == 3 and [b["x"].shape for b in data] == [(2, 16, 8, 8), (1, 16, 8, 8)]


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.ones((2, 8, 31), np.float32), "has shape [2, 8, 31], the model expects [-1, 8, 32]"),
        (np.full((2, 8, 32), np.nan, np.float32), "contains NaN or Inf"),
        (np.ones((2, 8, 32), np.int64), "is int64, the model expects float32"),
    ],
)
def test_bad_batches_give_one_line_errors_naming_the_file(tmp_path, array, message):
    model = attention_like()
    np.savez(tmp_path / "bad.npz", x=array)
    with pytest.raises(InvalidInputError, match="bad.npz") as err:  # found while counting, before any run
        load_calibration(tmp_path, model)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_input_and_empty_folder(tmp_path):
    model = attention_like()
    with pytest.raises(InvalidInputError, match="no array for model input 'x'"):
        check_batch({"y": np.ones((1, 8, 32), np.float32)}, model, "batch 0")
    with pytest.raises(InvalidInputError, match="no .npz, .npy, image or .txt files"):
        load_calibration(tmp_path, model)


def test_text_reader_tokenizes_per_batch_with_varying_lengths():
    from onnx import TensorProto, helper

    from tests.quant_graphs import shaped_model

    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["N", "S"]) for n in ("input_ids", "attention_mask")]
    model = shaped_model(
        [helper.make_node("Add", ["input_ids", "attention_mask"], ["y"])],
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["N", "S"])],
        [],
    )
    from converter.demos.models import minilm_folder

    texts = ["A short line.", "A much longer sentence with many more words in it than the first one."] * 3
    data = from_texts(texts, model, minilm_folder(), batch_size=2, max_length=16)
    batches = list(data)
    assert data.count == 6 and len(batches) == 3
    assert set(batches[0]) == {"input_ids", "attention_mask"} and batches[0]["input_ids"].dtype == np.int64
    with pytest.raises(InvalidInputError, match="tokenizer"):
        from_texts(texts, model, None)


def test_image_folder_reader(tmp_path):
    from onnx import TensorProto, helper
    from PIL import Image

    from tests.quant_graphs import shaped_model

    for i in range(3):
        Image.fromarray(np.full((40, 60, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    model = shaped_model(
        [helper.make_node("Relu", ["image"], ["y"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [],
    )
    data = from_image_folder(tmp_path, model, batch_size=2, norm="symmetric")
    batches = list(data)
    assert data.count == 3 and batches[0]["image"].shape == (2, 3, 16, 16)
    assert batches[0]["image"].min() == pytest.approx(-1.0)  # black, (0 - 0.5) / 0.5
    data.check(model)


# ----------------------------------------------------------------------------- cache
def test_cache_round_trip_skips_collection_and_exports_a_trt_table(tmp_path):
    model = attention_like()
    data = from_feeds(feeds_for(model), "test")
    first = calibrate(model, ["x0", "p"], data, tmp_path)
    again = calibrate(attention_like(), ["x0", "p"], data, tmp_path)  # a new object: the disk cache answers
    assert not first.from_cache and again.from_cache and first.key == again.key
    for method in ("minmax", "percentile", "entropy", "mse"):
        assert first.ranges(method) == again.ranges(method)
    other = calibrate(attention_like(seed=3), ["x0", "p"], data, tmp_path)
    assert other.key != first.key and not other.from_cache  # another model's weights: another key
    table = write_trt_table(tmp_path / "calib.table", first.ranges("minmax"))
    lines = table.read_text().splitlines()
    assert lines[0].startswith("TRT-") and len(lines) == 3
    read = read_trt_table(table)
    assert read.keys() == {"x0", "p"}
    assert read["p"] == pytest.approx(first.ranges("minmax")["p"], rel=1e-6)
