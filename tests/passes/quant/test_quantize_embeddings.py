"""quantize-embeddings: Gather tables in int8 per row / int4 per block, run by onnxruntime and
stored quantized by TensorRT-RTX."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from passes.base import PassContext
from passes.manager import run_passes
from passes.quant.quantize_embeddings import QuantizeEmbeddings, quantize_table
from passes.registry import PassSpec
from tests.onnx_helpers import first_output, make_model

VOCAB, HIDDEN = 1024, 128


def embedding_model(dtype=np.float32, tied: bool = False, seed: int = 0) -> onnx.ModelProto:
    """ids -> Gather(table) [+ position table] -> (optionally a tied output head MatMul(x, table^T))."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((VOCAB, HIDDEN)).astype(dtype)
    positions = rng.standard_normal((512, HIDDEN)).astype(dtype)
    kind = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["tok"]),
        helper.make_node("Gather", ["positions", "pos"], ["where"]),
        helper.make_node("Add", ["tok", "where"], ["y"]),
    ]
    inits = {"table": table, "positions": positions, "tiny": np.ones((2, HIDDEN), dtype)}
    nodes.append(helper.make_node("Gather", ["tiny", "pos"], ["t2"]))
    nodes.append(helper.make_node("Add", ["y", "t2"], ["out"]))
    outputs = [helper.make_tensor_value_info("out", kind, None)]
    if tied:
        nodes.append(helper.make_node("Gemm", ["out2d", "table"], ["logits"], transB=1))
        nodes.insert(-1, helper.make_node("Reshape", ["out", "flat"], ["out2d"]))
        inits["flat"] = np.array([-1, HIDDEN], np.int64)
        outputs.append(helper.make_tensor_value_info("logits", kind, None))
    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", 8]) for n in ("ids", "pos")]
    return make_model(nodes, ids, outputs, inits, opset=17)


def feeds(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"ids": rng.integers(0, VOCAB, (2, 8)), "pos": rng.integers(0, 2, (2, 8))}


def _quantize(model, **options):
    out, records = run_passes(model, [PassSpec("quantize-embeddings", options)], PassContext(opset=17))
    return out, records[-1]


def test_int8_per_row_is_within_half_a_step_per_row():
    table = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    codes, scale, block, error = quantize_table(table, 8, 128)
    assert codes.dtype == np.int8 and scale.shape == (64,) and block is None
    restored = codes * scale[:, None]
    assert np.all(np.abs(restored - table) <= scale[:, None] / 2 + 1e-7)
    assert error == pytest.approx(np.linalg.norm(restored - table) / np.linalg.norm(table), rel=1e-5)
    assert error < 0.01


def test_int4_blocks_run_along_the_row_in_slices_of_rows(monkeypatch):
    from passes.quant import quantize_embeddings

    table = np.random.default_rng(0).standard_normal((20, 256)).astype(np.float16)
    whole = quantize_table(table, 4, 64)
    monkeypatch.setattr(quantize_embeddings, "ROWS", 7)  # three slices, the last one short
    codes, scale, block, error = quantize_table(table, 4, 64)
    assert codes.shape == (20, 256) and scale.shape == (20, 4) and scale.dtype == np.float16 and block == 64
    assert np.array_equal(codes, whole[0]) and np.array_equal(scale, whole[1]) and error == pytest.approx(whole[3])
    steps = np.repeat(scale.astype(np.float32), 64, axis=1)
    assert np.all(np.abs(codes.astype(np.float32) * steps - table.astype(np.float32)) <= steps / 2 + 1e-3)


@pytest.mark.parametrize("bits, tolerance", [(8, 0.02), (4, 0.25)])
def test_gather_tables_are_quantized_and_onnxruntime_runs_them(bits, tolerance):
    model = embedding_model()
    out, record = _quantize(model, bits=bits)
    assert record.changed["tables_quantized"] == 2  # the 2 x 128 table is under min_elements
    assert any("under min_elements" in r["reason"] for r in record.rejected)
    assert [t["table"] for t in record.details["embeddings"]] == ["table", "positions"]
    dq = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 2 and all(
        n.output[0] in {m.input[0] for m in out.graph.node if m.op_type == "Gather"} for n in dq
    )
    stored = {i.name: i.data_type for i in out.graph.initializer}
    assert stored[dq[0].input[0]] == (TensorProto.INT8 if bits == 8 else TensorProto.INT4)
    assert "table" not in stored  # the float table is gone, not kept beside its quantized copy
    ref, got = first_output(model, feeds()), first_output(out, feeds())
    assert np.abs(got - ref).max() / np.abs(ref).max() < tolerance
    assert max(t["error"] for t in record.details["embeddings"]) < tolerance


def test_int4_moves_the_model_to_opset_21_and_int8_does_not():
    from converter.core.model_io import opset_of

    assert opset_of(_quantize(embedding_model(), bits=8)[0]) == 17
    assert opset_of(_quantize(embedding_model(), bits=4)[0]) == 21


def test_float16_tables_keep_float16_outputs():
    model = embedding_model(np.float16)
    out, _ = _quantize(model, bits=4, block_size=32)
    got = first_output(out, feeds())
    assert got.dtype == np.float16
    assert np.abs(got.astype(np.float32) - first_output(model, feeds()).astype(np.float32)).max() < 0.5


def test_a_table_shared_with_a_matmul_is_left_alone():
    out, record = _quantize(embedding_model(tied=True), bits=8)
    assert [t["table"] for t in record.details["embeddings"]] == ["positions"]
    assert any("also read by Gemm" in r["reason"] for r in record.rejected)


def test_running_twice_changes_nothing_the_second_time():
    once, _ = _quantize(embedding_model(), bits=4)
    twice, record = _quantize(once, bits=4)
    assert record.changed == {} and len(twice.graph.node) == len(once.graph.node)


def test_bad_options_fail_when_the_pass_is_built():
    for options in ({"bits": 2}, {"block_size": 100}, {"min_elements": -1}):
        with pytest.raises(ValueError):
            QuantizeEmbeddings(**options)


def test_tensorrt_rtx_stores_the_table_quantized(tmp_path):
    """Engine sizes on TensorRT-RTX (sm89): int8 halves an fp16 table, int4 block 128 quarters it."""
    pytest.importorskip("tensorrt_rtx")
    from converter.api import optimize
    from converter.backends import BuildConfig, ShapeProfile, get_backend

    rng = np.random.default_rng(0)
    table = rng.standard_normal((16384, 256)).astype(np.float32)  # 8 MB in fp16
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("Relu", ["e"], ["y"])]
    ids = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", 8])]
    model = make_model(nodes, ids, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"table": table})
    config = BuildConfig(profiles={"ids": ShapeProfile((1, 8), (2, 8), (4, 8))}, target_gpus=["sm89"])
    size = {}
    for bits in (16, 8, 4):
        source = model if bits == 16 else _quantize(model, bits=bits)[0]
        onnx.save(source, tmp_path / f"e{bits}.onnx")
        optimize(tmp_path / f"e{bits}.onnx", tmp_path / f"h{bits}.onnx", passes=[], precision="fp16")
        built = get_backend("tensorrt-rtx").build(tmp_path / f"h{bits}.onnx", tmp_path / f"e{bits}.engine", config)
        size[bits] = built.sidecar["engine_bytes"]
    fp16_table = table.size * 2
    assert size[16] - size[8] >= 0.75 * fp16_table / 2, size  # int8 saves 1 byte of 2 per value
    assert size[16] - size[4] >= 0.75 * fp16_table * 0.75, size  # int4 saves 1.5 bytes of 2


def test_quantize_command_stores_embeddings_with_the_weight_only_mode(tmp_path):
    import json

    from click.testing import CliRunner

    from converter import api
    from converter.cli.main import main
    from converter.core.errors import InvalidInputError

    onnx.save(embedding_model(), tmp_path / "e.onnx")
    args = ["quantize", str(tmp_path / "e.onnx"), "-o", str(tmp_path / "q.onnx"), "--mode", "int4-wo"]
    result = CliRunner().invoke(main, [*args, "--embeddings", "int4", "--block-size", "32", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [(t["table"], t["bits"], t["block"]) for t in report["embeddings"]] == [
        ("table", 4, 32),
        ("positions", 4, 32),
    ]
    assert report["weight_bytes"]["after"] < 0.2 * report["weight_bytes"]["before"]
    with pytest.raises(InvalidInputError, match="--embeddings"):
        api.quantize(tmp_path / "e.onnx", tmp_path / "x.onnx", mode="int4-wo", embeddings=2)
