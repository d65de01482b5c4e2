"""Benchmark: trtforge's fuse-attention vs onnxruntime's transformers optimizer, one run.

Models: MiniLM exported by TorchScript and dynamo, each with transformers' "eager"
and "sdpa" attention, and the decoder LM (causal, grouped-query attention) from both
exporters. Tools, each on the same exported graph:
- "none": the export as it is (the baseline: node count, plain fp16 conversion);
- "trtforge": passes `fold` then `fuse-attention` (opset upgraded to 23 by it), then
  `precision` (fp16, keep_sensitive) for the fp16 columns;
- "ort-transformers": `onnxruntime.transformers.optimizer.optimize_model(model_type="bert",
  num_heads, hidden_size)`, the tool the issue names.
Per row: attention blocks in the model (its Softmax count) and fused (Attention nodes:
the ONNX op for trtforge, com.microsoft Attention/MultiHeadAttention/GroupQueryAttention
for onnxruntime), nodes after, FP32 max-abs vs the export (onnxruntime CPU, real
inputs; for trtforge also of fuse-attention alone, folded vs fused), the FP16 graph's output error vs FP32 torch (trtforge: its precision pass,
keep_sensitive; onnxruntime: its own convert_float_to_float16(keep_io_types=True); run
in onnxruntime CPU, which computes some fp16 ops in fp32, so this bounds rounding of
weights and casts rather than fp16 arithmetic), and TensorRT-RTX: the fp16 graph
parsed and built for sm86 (parse only for the other tools' graphs), with its
ATTENTION_INPUT/ATTENTION_OUTPUT layer counts.

    python scripts/bench_fuse_attention.py --out bench_fuse_attention.json [--quick]

Output: {"results": [{"model", "tool", "attention_blocks", "attention_fused", "nodes",
"fp16_max_abs", "fp16_cosine", ...}], "goals": {...}, "environment": {...}}.
`--quick` (under two minutes): three models, fewer sample batches.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
import logging
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

from converter.backends import BuildConfig, get_backend  # noqa: E402
from converter.demos.models import _minilm_module  # noqa: E402
from converter.pipelines.export import export_model  # noqa: E402
from converter.pipelines.model_ref import resolve_spec  # noqa: E402
from converter.verification.compare import OnnxRunner, TorchRunner  # noqa: E402
from passes.base import PassContext  # noqa: E402
from passes.manager import PassSpec, run_passes  # noqa: E402

# name: (demo, exporter, attn implementation, heads, hidden size)
MODELS = {
    "minilm (torchscript, eager)": ("minilm", "torchscript", "eager", 12, 384),
    "minilm (dynamo, eager)": ("minilm", "dynamo", "eager", 12, 384),
    "minilm (torchscript, sdpa)": ("minilm", "torchscript", "sdpa", 12, 384),
    "minilm (dynamo, sdpa)": ("minilm", "dynamo", "sdpa", 12, 384),
    "decoder-lm (torchscript)": ("decoder-lm", "torchscript", None, 4, 128),
    "decoder-lm (dynamo)": ("decoder-lm", "dynamo", None, 4, 128),
}
QUICK = ["minilm (torchscript, eager)", "minilm (dynamo, sdpa)", "decoder-lm (torchscript)"]
ORT_ATTENTION_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention")


def spec_for(demo: str, attn: str | None):
    spec = resolve_spec(demo)
    if attn and attn != "eager":
        spec = dataclasses.replace(spec, factory=functools.partial(_minilm_module, attn))
    return spec


def errors(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> tuple[float, float]:
    """(max-abs, cosine) over every output, by position."""
    ref = np.concatenate([v.astype(np.float64).ravel() for v in reference.values()])
    cand = np.concatenate([v.astype(np.float64).ravel() for v in candidate.values()])
    cosine = float(ref @ cand / (np.linalg.norm(ref) * np.linalg.norm(cand)))
    return float(np.abs(ref - cand).max()), cosine


def collect(runner, feeds) -> dict[str, np.ndarray]:
    outputs: dict[str, list[np.ndarray]] = {}
    for batch in feeds:
        for i, value in enumerate(runner.run(batch).values()):
            outputs.setdefault(f"out{i}", []).append(np.asarray(value, np.float32).ravel())
    return {k: np.concatenate(v) for k, v in outputs.items()}


def tensorrt(path: Path, profiles, build: bool) -> dict:
    """Parse (and build for sm86) with TensorRT-RTX; attention layer counts or the error."""
    backend = get_backend("tensorrt-rtx")
    info: dict = {"built": False}
    try:
        if build:
            start = time.perf_counter()
            engine = backend.build(
                path, path.with_suffix(".engine"), BuildConfig(profiles=profiles, target_gpus=["sm86"])
            )
            info.update(built=True, build_seconds=round(time.perf_counter() - start, 2))
            info["engine_mb"] = round(engine.sidecar["engine_bytes"] / 2**20, 1)
            layers = engine.sidecar["network"]["layer_types"]
            info["layers"] = engine.sidecar["network"]["num_layers"]
        else:
            summary = backend.parse(path)
            layers, info["layers"] = summary.layer_types, summary.num_layers
        info["attention_input_layers"] = layers.get("ATTENTION_INPUT", 0)
        info["attention_output_layers"] = layers.get("ATTENTION_OUTPUT", 0)
    except Exception as exc:  # report what the builder said; the benchmark goes on
        info["error"] = str(exc).splitlines()[0][:300]
    return info


def fp16_errors(path: Path, feeds, reference) -> dict:
    try:
        max_abs, cosine = errors(reference, collect(OnnxRunner(path), feeds))
        return {"fp16_max_abs": max_abs, "fp16_cosine": cosine}
    except Exception as exc:  # e.g. an fp16 contrib op without a CPU kernel
        return {"fp16_max_abs": None, "fp16_cosine": None, "fp16_error": str(exc).splitlines()[0][:300]}


def run_trtforge(src: onnx.ModelProto, work: Path, feeds, reference, exported, profiles, build: bool) -> dict:
    start = time.perf_counter()
    folded, _ = run_passes(src, [PassSpec("fold")], PassContext(opset=17))
    fused, records = run_passes(folded, [PassSpec("fuse-attention")], PassContext(opset=17))
    seconds = time.perf_counter() - start
    record = records[-1]
    fused_counts = {
        k.removeprefix("attention_fused_"): v for k, v in record.changed.items() if k.startswith("attention_fused_")
    }
    low, precision = run_passes(fused, [PassSpec("precision", {"target": "fp16"})], PassContext(opset=23))
    for name, model in (("folded", folded), ("trtforge", fused), ("trtforge16", low)):
        onnx.save(model, work / f"{name}.onnx")
    fused_outputs = collect(OnnxRunner(work / "trtforge.onnx"), feeds)
    fp32_max_abs, _ = errors(exported, fused_outputs)
    fusion_max_abs, _ = errors(collect(OnnxRunner(work / "folded.onnx"), feeds), fused_outputs)
    return {
        "attention_fused": sum(1 for n in fused.graph.node if n.op_type == "Attention"),
        "attention_found": sum(fused_counts.values()) + len(record.rejected),
        "variants": fused_counts,
        "rejected": [f"{r['node']}: {r['reason']}" for r in record.rejected],
        "nodes": len(fused.graph.node),
        "nodes_after_fold": len(folded.graph.node),
        "seconds": round(seconds, 2),
        "fuse_attention_seconds": record.seconds,
        "fp32_max_abs_vs_export": fp32_max_abs,  # fold + fuse-attention
        "fp32_max_abs_fusion": fusion_max_abs,  # fuse-attention alone (folded vs fused)
        "kept_fp32": precision[0].notes,
        **fp16_errors(work / "trtforge16.onnx", feeds, reference),
        "tensorrt_rtx": tensorrt(work / "trtforge16.onnx", profiles, build),
    }


def run_ort(path: Path, work: Path, feeds, reference, exported, heads: int, hidden: int) -> dict:
    from onnxruntime.transformers import optimizer

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model = optimizer.optimize_model(str(path), model_type="bert", num_heads=heads, hidden_size=hidden)
    seconds = time.perf_counter() - start
    ops = Counter(f"{n.domain}::{n.op_type}" for n in model.model.graph.node if n.domain not in ("", "ai.onnx"))
    model.save_model_to_file(str(work / "ort.onnx"))
    fp32_max_abs, _ = errors(exported, collect(OnnxRunner(work / "ort.onnx"), feeds))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(work / "ort16.onnx"))
    return {
        "attention_fused": sum(ops.get(f"com.microsoft::{op}", 0) for op in ORT_ATTENTION_OPS),
        "fused_ops": dict(sorted(ops.items())),
        "nodes": len(model.model.graph.node),
        "seconds": round(seconds, 2),
        "fp32_max_abs_vs_export": fp32_max_abs,
        **fp16_errors(work / "ort16.onnx", feeds, reference),
        "tensorrt_rtx": tensorrt(work / "ort16.onnx", {}, build=False),
    }


def run_none(src: onnx.ModelProto, work: Path, feeds, reference) -> dict:
    low, _ = run_passes(src, [PassSpec("precision", {"target": "fp16"})], PassContext(opset=17))
    onnx.save(low, work / "none16.onnx")
    return {"attention_fused": 0, "nodes": len(src.graph.node), **fp16_errors(work / "none16.onnx", feeds, reference)}


def bench_model(name: str, quick: bool, work: Path) -> list[dict]:
    demo, exporter, attn, heads, hidden = MODELS[name]
    spec = spec_for(demo, attn)
    path = work / "export.onnx"
    start = time.perf_counter()
    export_model(spec, path, exporter=exporter)
    export_seconds = time.perf_counter() - start
    src = onnx.load(str(path))
    feeds = spec.sample_feeds(2 if quick else 4, 4 if quick else 8)
    reference = collect(TorchRunner(spec.module(), spec.input_names, spec.output_names), feeds)
    exported = collect(OnnxRunner(path), feeds)
    blocks = sum(1 for n in src.graph.node if n.op_type == "Softmax")
    base = {"model": name, "attention_blocks": blocks, "nodes_before": len(src.graph.node)}
    rows = [
        {**base, "tool": "none", "export_seconds": round(export_seconds, 1), **run_none(src, work, feeds, reference)}
    ]
    print(f"{name}: exported ({len(src.graph.node)} nodes, {blocks} attention blocks)", flush=True)
    for tool, run in (
        ("trtforge", lambda: run_trtforge(src, work, feeds, reference, exported, spec.profiles, build=True)),
        ("ort-transformers", lambda: run_ort(path, work, feeds, reference, exported, heads, hidden)),
    ):
        try:
            row = {**base, "tool": tool, **run()}
        except Exception as exc:  # one tool failing on one graph is a result, not a crash
            row = {**base, "tool": tool, "attention_fused": 0, "nodes": None, "fp16_max_abs": None, "fp16_cosine": None}
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        trt = row.get("tensorrt_rtx", {})
        print(
            f"  {tool:17s} fused {row['attention_fused']}/{blocks}  nodes {row['nodes']}  "
            f"fp16 max-abs {row.get('fp16_max_abs')}  TRT attention layers "
            f"{trt.get('attention_input_layers')}/{trt.get('attention_output_layers')} {trt.get('error', '')[:80]}",
            flush=True,
        )
        rows.append(row)
    return rows


def environment() -> dict:
    versions = {}
    for package in ("onnx", "onnxruntime", "torch", "transformers", "tensorrt-rtx-cu13", "onnx-graphsurgeon"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"python": platform.python_version(), "machine": platform.machine(), "versions": versions}


def goals(results: list[dict]) -> dict:
    by = {(r["model"], r["tool"]): r for r in results}
    ours = [r for r in results if r["tool"] == "trtforge"]
    return {
        "trtforge_fuses_every_block_ort_fuses": all(
            by[(m, "trtforge")]["attention_fused"] >= r["attention_fused"]
            for (m, tool), r in by.items()
            if tool == "ort-transformers"
        ),
        "trtforge_fuses_every_block": all(r["attention_fused"] == r["attention_blocks"] for r in ours),
        "one_attention_layer_pair_per_block": all(
            r.get("tensorrt_rtx", {}).get("attention_input_layers") == r["attention_blocks"]
            and r.get("tensorrt_rtx", {}).get("attention_output_layers") == r["attention_blocks"]
            for r in ours
        ),
        "fusion_fp32_equal_within_1e-5": all(
            r.get("fp32_max_abs_fusion") is not None and r["fp32_max_abs_fusion"] <= 1e-5 for r in ours
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="three models, fewer samples (under two minutes)")
    parser.add_argument("--models", nargs="*", choices=list(MODELS), help="run only these")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the ORT optimizer logs shape-inference chatter
    names = args.models or (QUICK if args.quick else list(MODELS))
    start = time.perf_counter()
    results: list[dict] = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix="trtforge-bench-attn-") as tmp:
            results.extend(bench_model(name, args.quick, Path(tmp)))
    report = {
        "results": results,
        "goals": goals(results),
        "environment": environment(),
        "quick": args.quick,
        "seconds": round(time.perf_counter() - start, 1),
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report["goals"], indent=1))
    print(f"wrote {args.out} ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
