from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from converter.core.errors import InvalidInputError, TrtforgeError
from passes import registry
from passes.base import Pass, PassContext, PassFailedError, PassResult
from passes.manager import PassSpec, run_passes
from tests.graphs import redundant_graph

CTX = PassContext(opset=17)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)


def test_cleanup_and_fold_remove_redundancy_exactly(x):
    model = redundant_graph()
    out, records = run_passes(model, [PassSpec("cleanup"), PassSpec("fold-constants"), PassSpec("cleanup")], CTX)
    assert [r.name for r in records] == ["cleanup", "fold-constants", "cleanup"]
    cleanup = records[0].changed
    assert cleanup["identity_removed"] == 2 and cleanup["dropout_removed"] == 1 and cleanup["noop_cast_removed"] == 1
    assert records[0].initializers_after < records[0].initializers_before  # 'unused' is gone
    assert records[1].changed["nodes_folded"] >= 1
    ops = [n.op_type for n in out.graph.node]
    assert "Identity" not in ops and "Dropout" not in ops and "Gather" not in ops and "Concat" not in ops
    assert ops.count("Add") == 1  # the constant c1 + c2 was folded
    # graph I/O names are the model's interface: unchanged
    assert [i.name for i in out.graph.input] == ["x"] and [o.name for o in out.graph.output] == ["y"]
    np.testing.assert_allclose(_run(out, x), _run(model, x), rtol=1e-6, atol=1e-6)
    assert all(r.seconds >= 0 for r in records) and records[0].nodes_before == len(model.graph.node)


def test_passes_are_idempotent():
    model = redundant_graph()
    once, _ = run_passes(model, [PassSpec("cleanup"), PassSpec("fold-constants")], CTX)
    twice, records = run_passes(once, [PassSpec("cleanup"), PassSpec("fold-constants")], CTX)
    assert all(not r.changed for r in records)
    assert len(twice.graph.node) == len(once.graph.node)


def test_manager_does_not_modify_its_input():
    model = redundant_graph()
    before = model.SerializeToString()
    run_passes(model, [PassSpec("cleanup"), PassSpec("fold-constants")], CTX)
    assert model.SerializeToString() == before


def test_on_stage_sees_every_pass():
    seen = []
    run_passes(
        redundant_graph(),
        [PassSpec("cleanup"), PassSpec("fold-constants")],
        CTX,
        on_stage=lambda rec, m: seen.append((rec.name, len(m.graph.node))),
    )
    assert [name for name, _ in seen] == ["cleanup", "fold-constants"]


@pytest.mark.parametrize("target, tolerance", [("fp16", 1e-2), ("bf16", 6e-2)])
def test_precision_pass_keeps_io_types(x, target, tolerance):
    model, _ = run_passes(redundant_graph(), [PassSpec("cleanup"), PassSpec("fold-constants")], CTX)
    low, records = run_passes(model, [PassSpec("precision", {"target": target})], CTX)
    assert records[0].changed["weights_converted"] >= 1
    assert low.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert low.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    low_type = {"fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}[target]
    assert {i.data_type for i in low.graph.initializer if i.name.startswith("W")} == {low_type}
    if target == "fp16":  # onnxruntime CPU has no bf16 MatMul
        np.testing.assert_allclose(_run(low, x), _run(model, x), atol=tolerance, rtol=tolerance)


def test_precision_pass_can_keep_ops_in_fp32(x):
    model, _ = run_passes(redundant_graph(), [PassSpec("fold-constants")], CTX)
    low, records = run_passes(model, [PassSpec("precision", {"keep_fp32_ops": ["MatMul"]})], CTX)
    assert records[0].changed["nodes_kept_fp32"] == 1
    matmul = next(n for n in low.graph.node if n.op_type == "MatMul")
    weights = {i.name: i for i in low.graph.initializer}
    assert weights[matmul.input[1]].data_type == onnx.TensorProto.FLOAT
    np.testing.assert_allclose(_run(low, x), _run(model, x), atol=1e-2, rtol=1e-2)


def test_unknown_pass_and_bad_option_are_input_errors():
    with pytest.raises(InvalidInputError, match="unknown pass 'nope'"):
        run_passes(redundant_graph(), [PassSpec("nope")], CTX)
    with pytest.raises(InvalidInputError, match="unknown option 'bogus'"):
        run_passes(redundant_graph(), [PassSpec("cleanup", {"bogus": 1})], CTX)


@pytest.mark.parametrize("options", [{}, {"keep_fp32_ops": ["MatMul"]}, {"keep_io_types": False}])
def test_precision_pass_is_idempotent(options):
    model, _ = run_passes(redundant_graph(), [PassSpec("fold-constants")], CTX)
    low, _ = run_passes(model, [PassSpec("precision", options)], CTX)
    again, records = run_passes(low, [PassSpec("precision", options)], CTX)
    assert records[0].changed == {}
    assert again.SerializeToString() == low.SerializeToString()
    names = [n.name for n in again.graph.node]
    assert len(names) == len(set(names))


def test_precision_pass_keep_io_false_changes_the_interface(x):
    model, _ = run_passes(redundant_graph(), [PassSpec("fold-constants")], CTX)
    low, records = run_passes(model, [PassSpec("precision", {"keep_io_types": False})], CTX)
    assert low.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert low.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    out = ort.InferenceSession(low.SerializeToString()).run(None, {"x": x.astype(np.float16)})[0]
    np.testing.assert_allclose(out.astype(np.float32), _run(model, x), atol=2e-2, rtol=2e-2)


def test_precision_saturates_and_reports_out_of_range_constants():
    model = redundant_graph()
    for init in model.graph.initializer:
        if init.name == "c1":
            init.CopyFrom(onnx.numpy_helper.from_array(np.full((8,), -3.4e38, np.float32), "c1"))
    low, records = run_passes(model, [PassSpec("precision")], CTX)
    assert records[0].changed["constants_saturated_to_fp16_range"] == 1
    c1 = next(i for i in low.graph.initializer if i.name.startswith("c1"))
    assert np.all(onnx.numpy_helper.to_array(c1) == -65504)


def test_upgrade_opset_keeps_local_functions_and_custom_domains():
    from onnx import TensorProto, helper

    twice = helper.make_function(
        "trtforge", "Twice", ["x"], ["y"], [helper.make_node("Add", ["x", "x"], ["y"])], [helper.make_opsetid("", 17)]
    )
    graph = helper.make_graph(
        [helper.make_node("Twice", ["x"], ["y"], domain="trtforge", name="t")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("trtforge", 1)], functions=[twice]
    )
    model.ir_version = 8
    out, _ = run_passes(model, [PassSpec("upgrade-opset")], CTX)
    assert [f.name for f in out.functions] == ["Twice"]
    assert {(o.domain, o.version) for o in out.opset_import} == {("", 20), ("trtforge", 1)}
    y = ort.InferenceSession(out.SerializeToString()).run(None, {"x": np.ones(2, np.float32)})[0]
    assert y.tolist() == [2.0, 2.0]


# ----------------------------------------------------------------------------- the contract, as the manager runs it
@dataclass
class _Probe(Pass):
    """Records the graph type and opset it was given in `seen`; raises `error` when set."""

    name = "probe"
    level = "graph"
    exact = True
    seen: ClassVar[list] = []
    error: ClassVar[Exception | None] = None

    def run(self, graph, ctx):
        self.seen.append((type(graph), ctx.opset))
        if self.error is not None:
            raise self.error
        result = PassResult()
        result.details["found"] = {"nodes": len(graph.nodes)}
        return result


@dataclass
class _ModelProbe(Pass):
    name = "model-probe"
    level = "model"
    seen: ClassVar[list] = []

    def run_model(self, model, ctx):
        self.seen.append(type(model))
        return model, PassResult()


@pytest.fixture
def probes(monkeypatch) -> dict[str, list]:
    """The probes registered, each with a fresh `seen` list."""
    seen: dict[str, list] = {}
    for cls in (_Probe, _ModelProbe):
        monkeypatch.setitem(registry.PASSES, cls.name, cls)
        monkeypatch.setattr(cls, "seen", seen.setdefault(cls.name, []))
    return seen


def test_manager_dispatches_on_the_declared_level(probes):
    run_passes(redundant_graph(), [PassSpec("probe"), PassSpec("model-probe")], CTX)
    assert probes["probe"] == [(gs.Graph, 17)] and probes["model-probe"] == [onnx.ModelProto]


def test_a_bad_option_fails_before_any_pass_runs(probes):
    start = time.perf_counter()
    stages = []
    with pytest.raises(InvalidInputError, match="pass 'fold-constants': unknown option 'size_cap' \\(did you mean"):
        run_passes(
            redundant_graph(),
            [PassSpec("probe"), PassSpec("fold"), PassSpec("fold-constants", {"size_cap": 1})],
            CTX,
            on_stage=lambda r, m: stages.append(r.name),
        )
    assert time.perf_counter() - start < 0.5 and probes["probe"] == [] and stages == []


@pytest.mark.parametrize("error", [ValueError("boom"), KeyError("k"), TypeError("t"), RuntimeError("r")])
def test_a_pass_bug_is_an_internal_error_naming_the_pass(probes, monkeypatch, error):
    monkeypatch.setattr(_Probe, "error", error)
    with pytest.raises(PassFailedError, match=f"pass 'probe' failed: {type(error).__name__}") as raised:
        run_passes(redundant_graph(), [PassSpec("cleanup"), PassSpec("probe")], CTX)
    assert not isinstance(raised.value, TrtforgeError) and raised.value.pass_name == "probe"
    assert raised.value.__cause__ is error


def test_a_trtforge_error_raised_by_a_pass_passes_through_unchanged(probes, monkeypatch):
    error = InvalidInputError("calibration batch 3: input 'x' has NaN")
    monkeypatch.setattr(_Probe, "error", error)
    with pytest.raises(InvalidInputError) as raised:
        run_passes(redundant_graph(), [PassSpec("probe")], CTX)
    assert raised.value is error


def test_cli_exits_1_for_a_pass_bug_and_names_the_pass(probes, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from converter.cli.main import main
    from converter.core.errors import ExitCode

    monkeypatch.setattr(_Probe, "error", KeyError("missing"))
    onnx.save(redundant_graph(), tmp_path / "m.onnx")
    args = ["optimize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--passes", "cleanup,probe"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == ExitCode.INTERNAL and "pass 'probe' failed: KeyError" in result.output


def test_details_reach_the_record_and_its_dict(probes):
    _, records = run_passes(redundant_graph(), [PassSpec("cleanup"), PassSpec("probe")], CTX)
    assert records[0].details == {} and records[1].details == {"found": {"nodes": records[1].nodes_before}}
    assert records[1].to_dict()["details"] == records[1].details


def test_the_opset_a_pass_reports_is_what_the_next_pass_sees(probes):
    ctx = PassContext(opset=13)  # the model says 17: that is what the first pass sees
    out, records = run_passes(
        redundant_graph(), [PassSpec("probe"), PassSpec("upgrade-opset", {"target": 21}), PassSpec("probe")], ctx
    )
    assert [opset for _, opset in probes["probe"]] == [17, 21] and ctx.opset == 21
    assert out.opset_import[0].version == 21 and records[1].changed == {"opset_upgraded": 1}


@pytest.mark.parametrize(
    "make, spec, opset",
    [
        ("tests.attention_graphs:attention_graph", PassSpec("fuse-attention"), 23),  # opset 17 upgraded to fuse
        ("tests.quant_graphs:mlp_stack", PassSpec("quantize", {"mode": "int4-wo"}), 21),  # block DQ needs 21
    ],
)
def test_model_passes_that_upgrade_report_the_opset(probes, make, spec, opset):
    module, factory = make.split(":")
    model = getattr(importlib.import_module(module), factory)()
    out, _ = run_passes(model, [spec, PassSpec("probe")], PassContext(opset=17))
    assert out.opset_import[0].version == opset and probes["probe"][-1][1] == opset
