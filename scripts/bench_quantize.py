"""Benchmark: trtforge INT8 (and fp8/int4/int2) vs onnxruntime quantize_static (and TensorRT Model Optimizer).

Same FP32 model (trtforge export + fold), same real calibration data, a disjoint real
validation set:
- MiniLM: standard-library docstring sentences, tokenized to 64 tokens;
- EfficientNet-Lite0: seeded random crops (scale, position, flip) of the photographs
  scikit-learn ships; calibration and validation crops differ.
Every tool's calibration runs in its own subprocess reading the same .npz files, so
wall time and peak RSS (ru_maxrss) are the calibration's own. Accuracy is measured in
onnxruntime CPU against the FP32 model: per-sample embedding cosine (mean, min) and
top-1 agreement. onnxruntime gets MatMul (MiniLM) / Conv+Gemm (EfficientNet) with
TensorRT-compatible symmetric int8 QDQ, per-channel weights, each of its calibration
methods. TensorRT Model Optimizer (`--modelopt`) needs its own venv
(`nvidia-modelopt[onnx]` pins onnx and onnxruntime-gpu); the script creates it under
~/.cache/trtforge/modelopt-venv and records the failure when it cannot.

    python scripts/bench_quantize.py --out bench_quantize.json [--quick] [--modelopt] [--weight-only]

Output: {"results": [{"model", "tool", "metric", "value", "min_cosine", "top1_agreement",
"calib_seconds", "calib_peak_rss_mb", "qdq_pairs", ...}], "engines": [...], "environment": {...}}.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_modelopt import MODELOPT_VENV, modelopt_python, run_modelopt  # noqa: E402  (beside this script)
from bench_quantize_data import effnet_data, minilm_data  # noqa: E402  (beside this script)

from calibration.data import from_array_folder  # noqa: E402


# ----------------------------------------------------------------------------- workers (subprocesses)
def worker(args) -> None:
    if args.worker in ("trtforge-wo", "ort-nbits"):
        from bench_quantize_wo import quantize_worker  # beside this script

        print(json.dumps(quantize_worker(args)))
        return
    model = onnx.load(args.model)
    if args.worker == "trtforge":  # the chosen setting's passes alone: statistics, ranges, Q/DQ, save
        from converter.core.model_io import save_model
        from converter.pipelines.quantize import _passes
        from passes.base import PassContext
        from passes.manager import run_passes

        start = time.perf_counter()  # after imports; loading the model is timed, as for onnxruntime
        model = onnx.load(args.model)
        data = from_array_folder(args.calib, model, batch_size=32)
        options = {"block_size": args.block} if args.block else {}
        quantized, _ = run_passes(
            model, _passes(args.mode, args.alpha, args.method, options), PassContext(20, calibration=data)
        )
        save_model(quantized, args.quantized)
    else:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = iter(from_array_folder(args.calib, model, batch_size=32))

            def get_next(self):
                return next(self.items, None)

        start = time.perf_counter()
        ops = (
            ["MatMul"]
            if any(n.op_type == "MatMul" for n in model.graph.node)
            and not any(n.op_type == "Conv" for n in model.graph.node)
            else ["Conv", "Gemm"]
        )
        method, _, variant = args.method.partition("-")  # "MinMax-u8": onnxruntime's default uint8 activations
        quantize_static(
            args.model,
            args.quantized,
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=ops,
            per_channel=True,
            activation_type=QuantType.QUInt8 if variant == "u8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method),
            extra_options={} if variant == "u8" else {"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: ru_maxrss would include the parent's, inherited at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(tool: str, model: Path, calib: Path, out: Path, method: str, **extra) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        tool,
        "--model",
        str(model),
        "--calib",
        str(calib),
        "--quantized",
        str(out),
        "--method",
        method,
    ]
    for key, value in extra.items():
        if value is not None:
            cmd += [f"--{key}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"failed": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    start = proc.stdout.rfind('{"seconds"')  # a tool may print progress around ours, even on its line
    if start < 0:
        return {"failed": "the worker printed no result"}
    return json.JSONDecoder().raw_decode(proc.stdout[start:])[0]


# ----------------------------------------------------------------------------- scoring
def score(reference: Path, candidate: Path, val: Path) -> dict:
    from calibration.sensitivity import run_outputs, sample_cosines, top1_agreement
    from converter.pipelines.quantize import count_qdq

    ref_model, cand_model = onnx.load(str(reference)), onnx.load(str(candidate))
    feeds = list(from_array_folder(val, ref_model, batch_size=64))
    ref, cand = run_outputs(ref_model, feeds), run_outputs(cand_model, feeds)
    cos = sample_cosines(cand, ref)
    return {
        "mean_cosine": round(float(cos.mean()), 5),
        "min_cosine": round(float(cos.min()), 5),
        "top1_agreement": round(top1_agreement(cand, ref), 4),
        "qdq_pairs": count_qdq(cand_model)["qdq_pairs"],
        "onnx_mb": round(candidate.stat().st_size / 1e6, 2),
    }


def engine_sizes(paths: dict[str, Path], profiles) -> list[dict]:
    from converter.backends import BuildConfig, get_backend

    backend, rows = get_backend("tensorrt-rtx"), []
    for label, path in paths.items():
        try:
            net = backend.parse(path)
            engine = backend.build(
                path, path.with_suffix(".engine"), BuildConfig(profiles=profiles, target_gpus=["sm89"])
            )
            rows.append(
                {
                    "model": label,
                    "engine_mb": round(engine.sidecar["engine_bytes"] / 1e6, 2),
                    "quantize_layers": net.layer_types.get("QUANTIZE", 0),
                    "dequantize_layers": net.layer_types.get("DEQUANTIZE", 0),
                    "target": "sm89",
                }
            )
        except Exception as exc:  # report the failure in the JSON rather than stopping the benchmark
            rows.append({"model": label, "failed": str(exc)[:300]})
    return rows


# ----------------------------------------------------------------------------- main
BUDGET = {"minilm": 0.002, "efficientnet-lite0": 0.002}  # max 1 - mean cosine on the calibration subset


def trtforge_rows(name: str, folder: Path, fp32: Path, quick: bool, add) -> None:
    """trtforge: choose method and SmoothQuant alpha on a calibration subset, then time the chosen setting alone."""
    from converter.pipelines.quantize import quantize

    calib = folder / "calib"
    start = time.perf_counter()
    data = from_array_folder(calib, onnx.load(str(fp32)), batch_size=32)
    if quick:  # the smoke run skips the search: minmax, and SmoothQuant 0.9 where there are MatMuls
        alpha = 0.9 if name == "minilm" else "off"
        searched = quantize(
            fp32, folder / "search.onnx", calib=data, method="minmax", smoothquant=alpha, search_samples=16
        )
    else:
        searched = quantize(fp32, folder / "search.onnx", calib=data, search_samples=64)
    method, alpha = searched.report["method"], searched.report["smoothquant_alpha"]
    search_seconds = round(time.perf_counter() - start, 1)
    out = folder / "trtforge_int8.onnx"
    add(
        "trtforge int8",
        out,
        run_worker("trtforge", fp32, calib, out, method, mode="int8", alpha=alpha),
        method=method,
        smoothquant_alpha=alpha,
        search_seconds=search_seconds,
        search=[
            {k: row[k] for k in ("smoothquant_alpha", "method", "mean_cosine")}
            for row in (searched.report.get("search") or {}).get("table", [])
        ],
    )
    if quick:
        return
    from converter.api import optimize

    # the rest in fp16: the engine to ship
    optimize(out, folder / "trtforge_int8_fp16.onnx", passes=[], precision="fp16")
    add("trtforge int8 + fp16 rest", folder / "trtforge_int8_fp16.onnx", {"seconds": 0.0, "peak_rss_mb": float("nan")})
    budget = folder / "trtforge_budget.onnx"
    start = time.perf_counter()
    mixed = quantize(fp32, budget, calib=data, method=method, smoothquant=alpha or "off", max_cosine_drop=BUDGET[name])
    add(
        "trtforge int8 budget",
        budget,
        {"seconds": time.perf_counter() - start, "peak_rss_mb": float("nan")},
        mixed_precision={k: v for k, v in (mixed.report.get("mixed_precision") or {}).items() if k != "sensitivity"},
    )
    for mode, block in (("fp8", None), ("int4-wo", 32), ("int4-wo", 128), ("int2-wo", 32)):
        path = folder / f"trtforge_{mode}_{block}.onnx"
        add(
            f"trtforge {mode}" + (f" block {block}" if block else ""),
            path,
            run_worker(
                "trtforge", fp32, calib, path, method, mode=mode, alpha=alpha if mode == "fp8" else None, block=block
            ),
        )


def bench_model(name: str, work: Path, quick: bool, tools: set[str], log) -> tuple[list[dict], list[dict]]:
    from converter import api
    from converter.backends import ShapeProfile

    folder = work / name
    folder.mkdir()
    api.export(name, folder / "model.onnx")
    api.optimize(folder / "model.onnx", folder / "fp32.onnx", passes=["fold"])
    fp32 = folder / "fp32.onnx"
    calib_n, val_n = (64, 64) if quick else (512, 512) if name == "minilm" else (256, 256)
    (minilm_data if name == "minilm" else effnet_data)(calib_n, val_n, folder)
    calib, val = folder / "calib", folder / "val"
    metric = "mean_embedding_cosine" if name == "minilm" else "top1_agreement"
    results = []

    def add(tool: str, path: Path, run: dict, **extra) -> None:
        row = {"model": name, "tool": tool, "metric": metric, "calib_samples": calib_n, "val_samples": val_n, **extra}
        if "failed" in run:
            row.update(value=None, failed=run["failed"])
        else:
            s = score(fp32, path, val)
            row.update(
                value=s["mean_cosine"] if name == "minilm" else s["top1_agreement"],
                **s,
                calib_seconds=round(run["seconds"], 2),
                calib_peak_rss_mb=round(run["peak_rss_mb"], 1),
            )
        results.append(row)
        log(json.dumps(row))

    if "trtforge" in tools:
        trtforge_rows(name, folder, fp32, quick, add)
    # symmetric int8 activations (what TensorRT runs), and onnxruntime's own default (asymmetric uint8)
    ort_methods = ["MinMax"] if quick else ["MinMax", "Percentile", "Entropy", "MinMax-u8", "Percentile-u8"]
    for ort_method in ort_methods if "ort" in tools else []:
        path = folder / f"ort_{ort_method}.onnx"
        label = ort_method.replace("-u8", " (default uint8 asymmetric activations, not TensorRT)")
        add(f"onnxruntime quantize_static {label}", path, run_worker("ort", fp32, calib, path, ort_method))
    if "modelopt" in tools:
        path = folder / "modelopt.onnx"
        add("tensorrt-model-optimizer int8", path, run_modelopt(fp32, calib, path))
    engines = []
    if not quick and "trtforge" in tools:
        from converter.api import optimize

        optimize(fp32, folder / "fp16.onnx", passes=[], precision="fp16")
        names = ("input_ids", "attention_mask", "token_type_ids") if name == "minilm" else ("image",)
        profiles = (
            {n: ShapeProfile((1, 64), (8, 64), (32, 64)) for n in names}
            if name == "minilm"
            else {"image": ShapeProfile((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))}
        )
        engines = engine_sizes(
            {
                f"{name} fp32": fp32,
                f"{name} fp16": folder / "fp16.onnx",
                f"{name} trtforge int8": folder / "trtforge_int8.onnx",
                f"{name} trtforge int8 + fp16 rest": folder / "trtforge_int8_fp16.onnx",
            },
            profiles,
        )
    return results, engines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_quantize.json"))
    parser.add_argument("--quick", action="store_true", help="64 calibration / 64 validation samples, int8 only")
    parser.add_argument("--modelopt", action="store_true", help="also TensorRT Model Optimizer (creates a venv)")
    parser.add_argument("--tools", default="trtforge,ort", help="comma-separated: trtforge, ort, modelopt")
    parser.add_argument("--models", help="default: minilm,efficientnet-lite0 (with --weight-only: minilm,decoder-lm)")
    parser.add_argument(
        "--weight-only", action="store_true", help="4/2-bit weight-only rows (scripts/bench_quantize_wo.py)"
    )
    for flag in (
        "--worker",
        "--model",
        "--calib",
        "--quantized",
        "--method",
        "--mode",
        "--alpha",
        "--block",
        "--embeddings",
    ):  # a worker
        parser.add_argument(flag, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.alpha = float(args.alpha) if args.alpha not in (None, "None") else None
        args.block = int(args.block) if args.block not in (None, "None") else None
        return worker(args)
    results, engines = [], []
    models = args.models or ("minilm,decoder-lm" if args.weight_only else "minilm,efficientnet-lite0")
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        for name in models.split(","):
            tools = set(args.tools.split(",")) | ({"modelopt"} if args.modelopt else set())
            log = lambda m: print(m, file=sys.stderr)  # noqa: E731
            if args.weight_only:
                from bench_quantize_wo import bench_weight_only  # beside this script

                python = MODELOPT_VENV / "bin" / "python"
                if "modelopt" in tools:
                    try:
                        python = modelopt_python()
                    except (subprocess.SubprocessError, OSError) as exc:
                        log(f"no Model Optimizer venv: {exc}")
                rows, built = bench_weight_only(name, Path(tmp), tools, args.quick, log, python)
            else:
                rows, built = bench_model(name, Path(tmp), args.quick, tools, log)
            results += rows
            engines += built
    env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": __import__("os").cpu_count()}
    for package in ("onnxruntime", "onnx", "tensorrt-rtx-cu13", "torch"):
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            env[package] = None
    args.out.write_text(json.dumps({"results": results, "engines": engines, "environment": env}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
