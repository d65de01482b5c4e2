"""The differential pass fuzzer (scripts/fuzz_passes.py) as tests.

A fixed-seed run finds no failure; every reproducer kept in tests/passes/fuzz_cases/ (each the
fuzzer's minimised output for a bug fixed in passes/) replays clean through every exact pass and
the fold group; the minimiser shrinks a planted bug to a smaller graph that still fails; and the
generator's graphs are valid and cover the families it promises.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from converter.core.errors import UnsupportedError
from passes import registry
from passes.base import Pass, PassContext, PassResult
from scripts.fuzz_graphs import FAMILIES, OPSETS, generate
from scripts.fuzz_judge import CRASH, FAILURE_CLASSES, MISMATCH
from scripts.fuzz_passes import default_passes, fuzz, judge_model, main

CASES = sorted((Path(__file__).parent / "fuzz_cases").glob("*.onnx"))
SEED = 2024
EXAMPLES = 250  # about 30 s on one core here
SLOW_EXAMPLES = 1000

# Ops each family brings (or the generator has no such graphs): a listed op missing from 200
# examples means the generator lost a family.
REQUIRED_OPS = {
    "Conv", "ConvTranspose", "BatchNormalization", "Pad", "MaxPool", "AveragePool", "GlobalAveragePool",
    "MatMul", "Gemm", "Add", "Mul", "Sub", "Div",
    "Reshape", "Transpose", "Slice", "Concat", "Gather", "Unsqueeze", "Squeeze", "Flatten", "Shape", "Expand",
    "ReduceMean", "Pow", "Sqrt", "Reciprocal", "Erf", "Tanh", "Softmax", "Where", "IsNaN",
    "Identity", "Dropout", "Cast", "Split", "Resize", "Clip",
}  # fmt: skip


REWRITTEN = {  # passes that must have changed some graph of the fixed-seed run
    *("cleanup", "fold-constants", "fold-shapes", "fold-pad", "fold-batchnorm", "reparam", "fold-linear"),
    *("dedupe", "fuse-norms", "fuse-attention", "upgrade-opset", "fold"),
}


def _failures(verdicts: dict) -> dict:
    return {name: (v.kind, v.message) for name, v in verdicts.items() if v.kind in FAILURE_CLASSES}


def test_fixed_seed_run_finds_no_failure(tmp_path):
    report = fuzz(EXAMPLES, SEED, out_dir=tmp_path)
    assert not report.generator_errors, report.generator_errors[:3]
    assert not report.failures, [f.to_dict() for f in report.failures[:5]]
    rewritten = {name for name, counts in report.counts.items() if counts.get("ok")}
    assert rewritten >= REWRITTEN, REWRITTEN - rewritten  # the run exercised them


@pytest.mark.slow
def test_larger_run_finds_no_failure(tmp_path):
    report = fuzz(SLOW_EXAMPLES, SEED + 1, out_dir=tmp_path, jobs=2)
    assert not report.generator_errors and not report.failures, [f.to_dict() for f in report.failures[:5]]


def test_there_are_saved_cases():
    assert CASES, "tests/passes/fuzz_cases/ holds the reproducers of the bugs the fuzzer found"


@pytest.mark.parametrize("case", CASES, ids=lambda path: path.stem)
def test_saved_case_replays_clean(case):
    """Each saved reproducer is a valid model (judge_model checks it first) that every exact pass
    and the fold group now keep equal."""
    assert not _failures(judge_model(onnx.load(case), default_passes()))


@dataclass
class FlipAddConstant(Pass):
    """Test-only and wrong on purpose: negates the constant operand of the first Add that has a non-zero one."""

    name = "test-flip-add-constant"
    level = "graph"
    exact = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult()
        for node in graph.nodes:
            for index, tensor in enumerate(node.inputs if node.op == "Add" else []):
                if isinstance(tensor, gs.Constant) and np.any(np.asarray(tensor.values) != 0):
                    flipped = np.array(-np.asarray(tensor.values))  # an array also for 0-d values
                    node.inputs[index] = gs.Constant(f"{tensor.name}_flipped", flipped)
                    result.count("add_constant_flipped", node.name)
                    return result
        return result


def test_minimiser_shrinks_a_planted_mismatch(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.PASSES, FlipAddConstant.name, FlipAddConstant)
    report = fuzz(25, SEED, [FlipAddConstant.name], out_dir=tmp_path, minimise_seconds=10, max_minimised=2)
    assert report.failures and {f.kind for f in report.failures} == {MISMATCH}
    minimised = [f for f in report.failures if f.minimised]
    assert len(minimised) == 2 and all(Path(f.reproducer).exists() for f in report.failures)
    for failure in minimised:
        reproducer = onnx.load(failure.reproducer)
        assert len(reproducer.graph.node) < failure.nodes, (failure.nodes, failure.reproducer_nodes)
        again = judge_model(reproducer, [FlipAddConstant.name])[FlipAddConstant.name]
        assert again.kind == MISMATCH, again


@dataclass
class RefusingPass(Pass):
    """Test-only: refuses every graph on purpose, as passes/base.py allows."""

    name = "test-refusing"
    level = "graph"
    exact = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        raise UnsupportedError("test-refusing handles no graph")


@dataclass
class HangingPass(Pass):
    """Test-only: never finishes in time."""

    name = "test-hanging"
    level = "graph"
    exact = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        time.sleep(30)
        return PassResult()


def test_refusals_are_not_failures_and_hangs_are_crashes(tmp_path, monkeypatch):
    for cls in (RefusingPass, HangingPass):
        monkeypatch.setitem(registry.PASSES, cls.name, cls)
    report = fuzz(2, SEED, [RefusingPass.name, HangingPass.name], out_dir=tmp_path, time_limit=0.2, max_minimised=0)
    assert [f.pass_name for f in report.refusals] == [RefusingPass.name] * 2
    assert {(f.pass_name, f.kind) for f in report.failures} == {(HangingPass.name, CRASH)}
    assert all(f.message.startswith("PassTimeout") and f.reproducer for f in report.failures)


def test_generated_graphs_are_valid_and_cover_the_families():
    ops, families, dtypes, opsets, dynamic = Counter(), Counter(), set(), set(), set()
    repeated_output = read_output = False
    for index in range(200):
        graph = generate(SEED, index)
        onnx.checker.check_model(graph.model, full_check=True)
        ops.update(node.op_type for node in graph.model.graph.node)
        families.update(graph.families)
        dtypes.add(graph.dtype)
        opsets.add(graph.opset)
        dynamic.add(graph.dynamic)
        outputs = [o.name for o in graph.model.graph.output]
        read = {name for node in graph.model.graph.node for name in node.input}
        repeated_output = repeated_output or len(set(outputs)) < len(outputs)
        read_output = read_output or bool(read & set(outputs))
    assert set(FAMILIES) <= set(families), set(FAMILIES) - set(families)
    assert set(ops) >= REQUIRED_OPS, REQUIRED_OPS - set(ops)
    assert dtypes == {"float32", "float16", "float64"} and opsets == set(OPSETS) and dynamic == {True, False}
    assert repeated_output and read_output


def test_examples_are_replayable_alone():
    """Example i depends on (seed, i) only: rebuilt alone, it is the same model."""
    assert generate(SEED, 17).model.SerializeToString() == generate(SEED, 17).model.SerializeToString()
    assert generate(SEED, 17).model.SerializeToString() != generate(SEED, 18).model.SerializeToString()


def test_command_line_writes_the_summary(tmp_path):
    summary = tmp_path / "fuzz.json"
    code = main(["--examples", "3", "--seed", "5", "--jobs", "1", "--out", str(tmp_path), "--json", str(summary)])
    data = json.loads(summary.read_text())
    assert code == 0 and data["examples"] == 3 and data["failures_by_class"] == dict.fromkeys(FAILURE_CLASSES, 0)
    assert set(data["counts"]) == set(default_passes())
    assert main(["--seed", "5", "--only", "2", "--jobs", "1", "--out", str(tmp_path)]) == 0
