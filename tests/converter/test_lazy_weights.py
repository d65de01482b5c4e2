"""Lazily loaded models (converter/core/external_data.py): weights stay in their data file, are
read in place by the passes that need them, shared with onnxruntime, and streamed at save;
the bytes saved are the same as from a model loaded whole."""

from __future__ import annotations

import io

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from converter.core import external_data
from converter.core.model_io import load_model, opset_of, save_model, sha256_model
from converter.core.ort_session import cpu_session
from passes.base import PassContext
from passes.manager import run_passes
from passes.model_utils import MappedValues, import_graph, restore_mapped
from passes.registry import PassSpec

N = 256  # a 256x256 fp32 weight is 256 KiB: mapped, not read in at load (LOAD_BELOW is 64 KiB)


def _model(dtype=np.float32) -> onnx.ModelProto:
    """x * c -> MatMul(w_scaled) -> MatMul(w_kept) + bias: fold-linear rewrites the first
    weight (it absorbs c), the second is only read."""
    rng = np.random.default_rng(0)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [
        numpy_helper.from_array(rng.standard_normal(N).astype(dtype) + 2, "c"),
        numpy_helper.from_array(rng.standard_normal((N, N)).astype(dtype) / 16, "w_scaled"),
        numpy_helper.from_array(rng.standard_normal((N, N)).astype(dtype) / 16, "w_kept"),
        numpy_helper.from_array(rng.standard_normal(N).astype(dtype), "bias"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "c"], ["xc"]),
        helper.make_node("MatMul", ["xc", "w_scaled"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w_kept"], ["m"]),
        helper.make_node("Add", ["m", "bias"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", elem, ["batch", "seq", N])],  # 3-D: MatMul + Add stays
        [helper.make_tensor_value_info("y", elem, ["batch", "seq", N])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def external(tmp_path):
    """The model saved with external data (every initializer of 1 KiB or more outside)."""
    path = tmp_path / "src" / "model.onnx"
    save_model(_model(), path, external_data_threshold=1)
    return path


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in model.graph.initializer}


def test_lazy_load_maps_large_weights_and_reads_small_ones_in(external):
    stored = onnx.load(str(external), load_external_data=False)
    assert all(i.data_location == onnx.TensorProto.EXTERNAL for i in stored.graph.initializer)
    lazy = _initializers(load_model(external, lazy=True))
    loaded = _initializers(load_model(external, lazy=False))
    for name in ("w_scaled", "w_kept"):
        assert external_data.is_mapped(lazy[name]) and not lazy[name].HasField("raw_data")
        path = external_data.byte_range(lazy[name])[0]
        assert path == str((external.parent / "model.onnx.data").resolve())
        view = external_data.to_array(lazy[name])
        assert not view.flags.writeable  # a view into the file's map: never written through
        np.testing.assert_array_equal(view, numpy_helper.to_array(loaded[name]))
    for name in ("c", "bias"):  # 1 KiB: read in, as onnx's loader would
        assert not external_data.is_mapped(lazy[name]) and lazy[name].raw_data == loaded[name].raw_data


def test_passes_on_a_lazy_model_save_the_same_bytes_as_on_a_loaded_one(external, tmp_path):
    specs = [PassSpec("fold")]
    saved = {}
    for lazy in (False, True):
        model = load_model(external, lazy=lazy)
        result, _ = run_passes(model, specs, PassContext(opset=opset_of(model)))
        for threshold, form in ((1, "external"), (10**12, "inline")):
            out = tmp_path / f"{form}-{lazy}" / "model.onnx"
            save_model(result, out, external_data_threshold=threshold)
            saved[form, lazy] = out.read_bytes() + (
                out.with_name("model.onnx.data").read_bytes() if form == "external" else b""
            )
        saved["hash", lazy] = sha256_model(model)
    for what in ("external", "inline", "hash"):
        assert saved[what, False] == saved[what, True], what


def test_weights_a_pass_only_reads_stay_in_their_file(external):
    model = load_model(external, lazy=True)
    result, records = run_passes(model, [PassSpec("fold")], PassContext(opset=opset_of(model)))
    assert any(r.changed.get("pre_scale") for r in records), "fold-linear did not absorb c"
    inits = _initializers(result)
    assert external_data.is_mapped(inits["w_kept"])  # read (dedupe, fold-linear looked at it), not copied
    rewritten = [i for i in result.graph.initializer if i.dims == [N, N] and i.name != "w_kept"]
    assert len(rewritten) == 1 and rewritten[0].HasField("raw_data")  # w_scaled * c: new values, in memory


def test_views_a_pass_read_go_back_to_their_stub(external):
    graph = import_graph(load_model(external, lazy=True))
    weight = graph.tensors()["w_kept"]
    assert isinstance(weight._values, MappedValues)
    total = float(np.asarray(weight.values).sum())  # gs keeps the loaded view as the values
    assert isinstance(weight._values, np.ndarray)
    assert restore_mapped(graph) == 1
    assert isinstance(weight._values, MappedValues) and float(weight.values.sum()) == total


def test_onnxruntime_runs_a_lazy_model_with_its_weights_bound_by_name(external):
    x = np.random.default_rng(1).standard_normal((2, 3, N)).astype(np.float32)
    expected = cpu_session(external).run(None, {"x": x})[0]
    got = cpu_session(load_model(external, lazy=True)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, expected)


def test_copy_to_streams_into_any_writable(external):
    tensor = _initializers(load_model(external, lazy=True))["w_kept"]
    sink = io.BytesIO()  # no file descriptor: the chunked copy
    assert external_data.copy_to(tensor, sink) == N * N * 4
    assert sink.getvalue() == external_data.read_bytes(tensor)


def test_types_numpy_cannot_view_are_read_by_onnx_and_inlined_for_onnxruntime(tmp_path):
    values = np.linspace(-2, 2, N * N, dtype=np.float32).reshape(N, N).astype(ml_dtypes.bfloat16)
    tensor = numpy_helper.from_array(values, "w")
    cast = helper.make_node("Cast", ["w"], ["wf"], to=onnx.TensorProto.FLOAT)
    graph = helper.make_graph(
        [cast, helper.make_node("Add", ["x", "wf"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [N, N])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [N, N])],
        [tensor],
    )
    path = tmp_path / "bf16.onnx"
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path, external_data_threshold=1)
    lazy = load_model(path, lazy=True)
    stub = lazy.graph.initializer[0]
    assert external_data.is_mapped(stub)
    np.testing.assert_array_equal(external_data.to_array(stub).astype(np.float32), values.astype(np.float32))
    copy, weights = external_data.ort_form(lazy)  # in the data folder: read by onnxruntime by path
    assert weights.folder == str(tmp_path.resolve()) and weights.names == []
    assert copy.graph.initializer[0].external_data[0].value == "bf16.onnx.data"
    y = cpu_session(lazy).run(None, {"x": np.zeros((N, N), np.float32)})[0]
    np.testing.assert_array_equal(y, values.astype(np.float32))


def test_int4_weight_only_keeps_an_fp16_graph_in_fp16(tmp_path):
    path = tmp_path / "fp16" / "model.onnx"
    save_model(_model(np.float16), path, external_data_threshold=1)
    model = load_model(path, lazy=True)
    spec = PassSpec("quantize", {"mode": "int4-wo", "block_size": 32})
    result, records = run_passes(model, [spec], PassContext(opset=opset_of(model)))
    assert records[0].changed.get("weight_dq") == 2
    dq = [n for n in result.graph.node if n.op_type == "DequantizeLinear"]
    inits = _initializers(result)
    assert {inits[n.input[1]].data_type for n in dq} == {onnx.TensorProto.FLOAT16}  # fp16 scales: fp16 weights out
    assert {inits[n.input[0]].data_type for n in dq} == {onnx.TensorProto.INT4}
    x = np.random.default_rng(2).standard_normal((2, 4, N)).astype(np.float16)
    reference = cpu_session(path).run(None, {"x": x})[0].astype(np.float32)
    got = cpu_session(result).run(None, {"x": x})[0].astype(np.float32)
    cosine = float((reference * got).sum() / np.linalg.norm(reference) / np.linalg.norm(got))
    assert got.dtype == np.float32 and cosine > 0.99, cosine


def test_a_data_file_replaced_by_a_later_save_is_mapped_anew(tmp_path):
    path = tmp_path / "model.onnx"
    reads = []
    for seed in (1, 2):
        model = _model()
        weight = next(i for i in model.graph.initializer if i.name == "w_kept")
        weight.raw_data = np.random.default_rng(seed).standard_normal((N, N)).astype(np.float32).tobytes()
        save_model(model, path, external_data_threshold=1)  # same path: the data file is replaced
        stub = _initializers(load_model(path))["w_kept"]
        reads.append(np.array(external_data.to_array(stub)))
        np.testing.assert_array_equal(reads[-1], np.frombuffer(weight.raw_data, np.float32).reshape(N, N))
    assert not np.array_equal(reads[0], reads[1])


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_activation_qdq_of_an_fp16_graph_has_fp16_scales(tmp_path, mode):
    path = tmp_path / "fp16" / "model.onnx"
    save_model(_model(np.float16), path, external_data_threshold=1)
    model = load_model(path)
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((2, 4, N)).astype(np.float16)} for _ in range(4)]
    ctx = PassContext(opset=opset_of(model), calibration=feeds)
    result, records = run_passes(model, [PassSpec("quantize", {"mode": mode})], ctx)
    assert records[0].changed.get("activation_qdq", 0) >= 2 and records[0].changed.get("weight_dq") == 2
    assert opset_of(result) >= 19  # QuantizeLinear of float16 input
    inits = _initializers(result)
    scales = {
        inits[n.input[1]].data_type for n in result.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
    }
    assert scales == {onnx.TensorProto.FLOAT16}
    reference = cpu_session(path).run(None, feeds[0])[0].astype(np.float32)
    got = cpu_session(result).run(None, feeds[0])[0].astype(np.float32)
    cosine = float((reference * got).sum() / np.linalg.norm(reference) / np.linalg.norm(got))
    assert cosine > 0.98, cosine


def test_one_npz_file_is_calibration_data(tmp_path):
    """`--calib FILE.npz`: the samples on the arrays' first axis, as `--load-inputs` takes them."""
    from calibration.readers import load_calibration

    model = _model()
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.random.default_rng(4).standard_normal((6, 3, N)).astype(np.float32))
    data = load_calibration(path, model, batch_size=4)
    assert data.count == 6 and sum(len(f["x"]) for f in data) == 6


def test_weights_from_another_folder_are_bound_by_name(external, tmp_path):
    """A model whose mapped weights lie in two folders (pieced together through the API): onnxruntime
    reads the main folder by path and gets the others as arrays."""
    import shutil

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(external.with_name("model.onnx.data"), other / "weights.bin")
    model = load_model(external)
    moved = _initializers(model)["w_kept"]
    for entry in moved.external_data:
        if entry.key == "location":
            entry.value = str((other / "weights.bin").resolve())
    copy, weights = external_data.ort_form(model)
    assert weights.folder == str(external.parent.resolve()) and weights.names == ["w_kept"]
    x = np.random.default_rng(5).standard_normal((1, 2, N)).astype(np.float32)
    np.testing.assert_array_equal(
        cpu_session(model).run(None, {"x": x})[0], cpu_session(external).run(None, {"x": x})[0]
    )
