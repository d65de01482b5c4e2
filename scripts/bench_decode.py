"""Decoder LMs with a KV cache: trtforge's export + fusion against Hugging Face Optimum's export.

    pip install -e ".[bench]" && python scripts/bench_decode.py --out bench_decode.json [--quick]

For each model (the trained decoder-lm, Llama-shaped random-weight specs from
scripts/llama_spec.py) and each tool, one row:
- trtforge: `export --task text-generation-with-past`, then the passes `fold,fuse-opset23`;
- optimum: optimum-onnx's `text-generation-with-past` export (its own venv,
  scripts/bench_decode_optimum.py), as it writes it; it exports transformers models only.
Measured the same way for both graphs: nodes; attention blocks (Softmax or Attention
nodes) and how many are one `Attention` op; greedy generation of 32 tokens for 8
held-out prompts against the torch model with its cache (token agreement); the
onnxruntime CPU latency of one decode step (batch 1, one token) at past length 64 and
512, median of repeated runs, each tool's graph timed in its own fresh process;
TensorRT-RTX (sm89) build with the prefill + decode profiles: success and engine bytes.
`--quick` (under three minutes): decoder-lm and the tiny Llama, fewer timing repeats, no
engine builds. decoder-lm has 128 learned positions, so its past-512 latency is null.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODELS = {  # name -> (model argument, transformers model factory or None, positions)
    "decoder-lm": ("decoder-lm", None, 128),
    "llama-tiny": ("scripts.llama_spec:tiny_causal_lm", "tiny_causal_lm", 1024),
    "llama-small": ("scripts.llama_spec:small_causal_lm", "small_causal_lm", 2048),
}

TIMER = """
import json, sys, time, statistics
import numpy as np
sys.path.insert(0, sys.argv[1])
from converter.core.ort_session import cpu_session
session = cpu_session(sys.argv[2])
out = {}
for past in json.loads(sys.argv[3]):
    feeds = {}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values."):
            dtype = np.float16 if "float16" in i.type else np.float32
            feeds[i.name] = np.random.default_rng(0).standard_normal((1, i.shape[1], past, i.shape[3])).astype(dtype)
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones((1, past + 1), np.int64)
        elif i.name == "position_ids":
            feeds[i.name] = np.array([[past]], np.int64)
        else:
            feeds[i.name] = np.array([[7]], np.int64)
    for _ in range(5):
        session.run(None, feeds)
    times = []
    for _ in range(int(sys.argv[4])):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    out[str(past)] = statistics.median(times)
print(json.dumps(out))
"""


def decode_latency(path: Path, pasts: list[int], repeats: int) -> dict[str, float | None]:
    """Median ms of one decode step per past length, in a fresh process (one per tool's graph)."""
    done = subprocess.run(
        [sys.executable, "-c", TIMER, str(REPO), str(path), json.dumps(pasts), str(repeats)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1][:300]}
    return {k: round(v, 4) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def attention_counts(path: Path) -> tuple[int, int, int]:
    """(nodes, attention blocks, fused): a block is a Softmax or an Attention node."""
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    fused = sum(n.op_type == "Attention" for n in nodes)
    return len(nodes), fused + sum(n.op_type == "Softmax" for n in nodes), fused


def token_agreement(spec, path: Path, prompts: int, steps: int) -> dict:
    from converter.demos.with_past import prompt_tokens
    from converter.pipelines.generation_check import torch_reference
    from converter.verification.compare import OnnxRunner
    from converter.verification.generation import compare_generations, greedy

    tokens = prompt_tokens(prompts, 64, 256)
    reference = greedy(torch_reference(spec), spec.cache, tokens, steps)
    check = compare_generations(reference, greedy(OnnxRunner(path), spec.cache, tokens, steps), ("torch", "onnx"), 64)
    return {"token_agreement": check.agreement_per_step[-1], "tokens_identical": check.identical}


def engine_size(spec, path: Path, work: Path) -> dict:
    """TensorRT-RTX build (sm89) with the prefill + decode profiles."""
    from converter.backends import get_backend
    from converter.backends.base import BuildConfig

    config = BuildConfig(profile_sets=spec.cache.profiles(), target_gpus=["sm89"])
    try:
        side = get_backend("tensorrt-rtx").build(path, work / f"{path.stem}.engine", config).sidecar
    except Exception as exc:  # a peer's graph may not build: record it
        return {"engine_bytes": None, "engine_error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    layers = side["network"]["layer_types"]
    return {
        "engine_bytes": side["engine_bytes"],
        "engine_profiles": len(side["optimization_profiles"]),
        "engine_attention_layers": layers.get("ATTENTION_INPUT", 0),
    }


def measure(row: dict, spec, path: Path, work: Path, args, positions: int) -> dict:
    nodes, blocks, fused = attention_counts(path)
    pasts = [p for p in (64, 512) if p + 1 <= positions]
    latency = decode_latency(path, pasts, args.repeats)
    row.update(nodes=nodes, attention_blocks=blocks, attention_fused=fused)
    row.update(decode_ms_past64=latency.get("64"), decode_ms_past512=latency.get("512"))
    if "error" in latency:
        row["latency_error"] = latency["error"]
    row.update(token_agreement(spec, path, args.prompts, args.steps))
    row.update(engine_size(spec, path, work) if not args.quick else {"engine_bytes": None})
    return row


def trtforge_row(name: str, model: str, work: Path, args, positions: int) -> dict:
    from converter import api
    from converter.core.kv_cache import TASK_WITH_PAST
    from converter.pipelines.model_ref import resolve_spec

    spec = resolve_spec(model, task=TASK_WITH_PAST)
    start = time.perf_counter()
    api.export(model, work / "model.onnx", task=TASK_WITH_PAST)
    api.optimize(work / "model.onnx", work / "model.opt.onnx", passes=["fold", "fuse-opset23"])
    row = {"model": name, "tool": "trtforge", "seconds": round(time.perf_counter() - start, 2)}
    row["nodes_exported"] = len(onnx.load(str(work / "model.onnx"), load_external_data=False).graph.node)
    return measure(row, spec, work / "model.opt.onnx", work, args, positions)


def optimum_row(name: str, model: str, factory: str | None, work: Path, args, positions: int) -> dict:
    from converter.core.kv_cache import TASK_WITH_PAST
    from converter.pipelines.model_ref import resolve_spec
    from scripts import llama_spec
    from scripts.bench_decode_optimum import export_with_optimum

    row = {"model": name, "tool": "optimum"}
    if factory is None:
        return {**row, "error": "not a transformers model: Optimum exports transformers models only"}
    getattr(llama_spec, factory)().save_pretrained(work / "hf")
    exported = export_with_optimum(work / "hf", work / "optimum")
    if "error" in exported:
        return {**row, "error": exported["error"]}
    row.update(seconds=exported["seconds"], version=exported["version"])
    return measure(row, resolve_spec(model, task=TASK_WITH_PAST), exported["path"], work, args, positions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default=None, help="comma-separated subset of " + ",".join(MODELS))
    args = parser.parse_args()
    args.repeats, args.prompts, args.steps = (30, 4, 16) if args.quick else (200, 8, 32)
    names = args.models.split(",") if args.models else (["decoder-lm", "llama-tiny"] if args.quick else list(MODELS))
    results = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        for name in names:
            model, factory, positions = MODELS[name]
            for tool in ("trtforge", "optimum"):
                work = Path(tmp) / name / tool
                work.mkdir(parents=True)
                row = (
                    trtforge_row(name, model, work, args, positions)
                    if tool == "trtforge"
                    else optimum_row(name, model, factory, work, args, positions)
                )
                results.append(row)
                print(json.dumps(row), flush=True)
    summary = {"results": results, "seconds": round(time.perf_counter() - started, 1), "quick": args.quick}
    summary["decode_speedup_vs_optimum"] = speedups(results)
    args.out.write_text(json.dumps(summary, indent=1))


def speedups(results: list[dict]) -> dict[str, dict[str, float]]:
    """optimum's decode ms / trtforge's, per model and past length (> 1: trtforge faster)."""
    out: dict[str, dict[str, float]] = {}
    for row in results:
        if row["tool"] != "trtforge":
            continue
        peer = next((r for r in results if r["model"] == row["model"] and r["tool"] == "optimum"), {})
        for key in ("decode_ms_past64", "decode_ms_past512"):
            if row.get(key) and peer.get(key):
                out.setdefault(row["model"], {})[key] = round(peer[key] / row[key], 3)
    return out


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
