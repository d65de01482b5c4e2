"""Benchmark: trtforge's fold passes vs onnxslim and onnxsim on the same graphs, one run.

For each model (EfficientNet-Lite0 TorchScript export with constant folding off,
MiniLM TorchScript and dynamo exports, a generated RepVGG-style CNN with BN) and each
tool it records: node count after, wall time (after a warm-up run of every tool on a
tiny graph, so one-time imports are not timed), max |output difference| vs the original
graph on the model's real sample inputs (onnxruntime CPU), and the number of layers in
TensorRT-RTX's parsed network (plus the engine build time unless --quick).

    python scripts/bench_fold.py --out bench_fold.json [--quick]

Output: {"results": [{"model", "tool", "nodes", "seconds", "max_abs_diff",
"network_layers", "build_seconds", "ops"}...], "goals": {...}, "environment": {...}}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from converter.api import optimize  # noqa: E402
from converter.backends import BuildConfig, get_backend  # noqa: E402
from converter.core.model_spec import ModelSpec
from converter.pipelines.export import export_model  # noqa: E402
from converter.pipelines.model_ref import resolve_spec  # noqa: E402
from converter.verification.compare import OnnxRunner  # noqa: E402
from scripts.fixture_models import repvgg_spec  # noqa: E402

MODELS = {
    "efficientnet-lite0 (torchscript, no constant folding)": (
        lambda: resolve_spec("efficientnet-lite0"),
        "torchscript",
        False,
    ),
    "minilm (torchscript)": (lambda: resolve_spec("minilm"), "torchscript", True),
    "minilm (dynamo)": (lambda: resolve_spec("minilm"), "dynamo", True),
    "repvgg-cnn (with BN)": (repvgg_spec, "torchscript", False),
}


def run_trtforge(src: Path, dst: Path) -> None:
    optimize(src, dst, passes=["fold"])


def run_onnxslim(src: Path, dst: Path) -> None:
    import onnxslim

    onnx.save(onnxslim.slim(onnx.load(str(src))), str(dst))


def run_onnxsim(src: Path, dst: Path) -> None:
    import onnxsim

    model, ok = onnxsim.simplify(onnx.load(str(src)))
    if not ok:
        raise RuntimeError("onnxsim could not validate its result")
    onnx.save(model, str(dst))


TOOLS = {"trtforge": run_trtforge, "onnxslim": run_onnxslim, "onnxsim": run_onnxsim}


def warm_up(work: Path) -> None:
    """Run every tool once on a tiny graph so that one-time imports are not timed."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "i0"),
        numpy_helper.from_array(np.array([0], np.int64), "ax"),
        numpy_helper.from_array(np.array([2, 2], np.int64), "tail"),
    ]
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
        helper.make_node("Concat", ["n1", "tail"], ["t"], axis=0),
        helper.make_node("Reshape", ["x", "t"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "warm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 2])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = work / "warm.onnx"
    onnx.save(model, str(src))
    for tool, run in TOOLS.items():
        run(src, work / f"warm_{tool}.onnx")


def max_abs_diff(reference: dict, candidate: Path, feeds: list[dict]) -> float:
    runner = OnnxRunner(candidate)
    worst = 0.0
    for batch, ref in zip(feeds, reference["outputs"], strict=True):
        out = runner.run(batch)
        for name, value in ref.items():
            worst = max(worst, float(np.max(np.abs(out[name] - value))))
    return worst


def network_stats(path: Path, spec: ModelSpec, build: bool) -> tuple[int | None, float | None]:
    backend = get_backend("tensorrt-rtx")
    layers = backend.parse(path).num_layers
    if not build:
        return layers, None
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        backend.build(path, Path(tmp) / "m.engine", BuildConfig(profiles=spec.profiles, target_gpus=["sm86"]))
        return layers, round(time.perf_counter() - start, 3)


def bench_model(
    label: str, spec: ModelSpec, exporter: str, constant_folding: bool, work: Path, build: bool
) -> list[dict]:
    source = work / f"{len(list(work.iterdir()))}_original.onnx"
    export_model(spec, source, exporter=exporter, constant_folding=constant_folding)
    feeds = spec.sample_feeds(2, 4)
    original_runner = OnnxRunner(source)
    reference = {"outputs": [original_runner.run(batch) for batch in feeds]}
    rows = []
    layers, build_s = network_stats(source, spec, build)
    rows.append(_row(label, "original", source, 0.0, 0.0, layers, build_s))
    for tool, run in TOOLS.items():
        out = source.with_name(source.stem.replace("original", tool) + ".onnx")
        start = time.perf_counter()
        try:
            run(source, out)
        except Exception as exc:  # a peer failing is a result, not a crash of the benchmark
            rows.append({"model": label, "tool": tool, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            continue
        seconds = time.perf_counter() - start
        layers, build_s = network_stats(out, spec, build)
        rows.append(_row(label, tool, out, seconds, max_abs_diff(reference, out, feeds), layers, build_s))
        print(
            f"{label:<55} {tool:<9} nodes {rows[-1]['nodes']:>4}  {seconds:6.2f} s  "
            f"diff {rows[-1]['max_abs_diff']:.2e}  layers {layers}",
            flush=True,
        )
    return rows


def _row(label, tool, path, seconds, diff, layers, build_s) -> dict:
    model = onnx.load(str(path), load_external_data=False)
    return {
        "model": label,
        "tool": tool,
        "nodes": len(model.graph.node),
        "seconds": round(seconds, 3),
        "max_abs_diff": diff,
        "network_layers": layers,
        "build_seconds": build_s,
        "ops": dict(Counter(n.op_type for n in model.graph.node).most_common()),
    }


def goals(results: list[dict]) -> dict:
    """The issue's targets, evaluated per model."""
    verdict = {}
    for label in MODELS:
        rows = {r["tool"]: r for r in results if r["model"] == label and "error" not in r}
        ours = rows.get("trtforge")
        peers = [rows[t] for t in ("onnxslim", "onnxsim") if t in rows]
        if not ours or not peers:
            verdict[label] = {"evaluated": False}
            continue
        best_peer = min(p["nodes"] for p in peers)
        verdict[label] = {
            "nodes_le_best_peer": ours["nodes"] <= best_peer,
            "nodes_lt_best_peer": ours["nodes"] < best_peer,
            "not_slower_than_onnxslim": "onnxslim" not in rows or ours["seconds"] <= rows["onnxslim"]["seconds"],
            "network_layers_le_original": ours["network_layers"] <= rows["original"]["network_layers"],
        }
    return verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_fold.json"))
    parser.add_argument("--quick", action="store_true", help="no engine builds (parse only); under two minutes")
    args = parser.parse_args()
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-fold-") as tmp:
        warm_up(Path(tmp))
        for label, (make_spec, exporter, constant_folding) in MODELS.items():
            results += bench_model(label, make_spec(), exporter, constant_folding, Path(tmp), build=not args.quick)
    versions = {p: metadata.version(p) for p in ("onnx", "onnxruntime", "onnxslim", "onnxsim", "tensorrt-rtx-cu13")}
    report = {
        "results": results,
        "goals": goals(results),
        "environment": {"platform": platform.platform(), "versions": versions, "quick": args.quick},
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["goals"], indent=1))


if __name__ == "__main__":
    main()
