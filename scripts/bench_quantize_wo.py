"""Weight-only rows of scripts/bench_quantize.py (`--weight-only`): 4-bit and 2-bit weights.

On MiniLM (mean embedding cosine on validation sentences it was not calibrated on) and the
trained decoder-lm demo (perplexity on held-out text, and its increase over fp32):
- trtforge int4-wo with `--algorithm rtn | awq | gptq | awq-gptq` at blocks 32 and 128, and int2-wo
  (decoupleQ with GPTQ rounding) at block 32; on MiniLM also gptq block 128 with its embedding
  tables in int8 / int4 (`--embeddings`);
- onnxruntime's MatMulNBitsQuantizer, 4 bits, blocks 32 and 128: its default (blockwise
  round-to-nearest, asymmetric with zero points: its best RTN) and GPTQ (its bundled
  implementation, fed the same calibration data); its MatMulNBits graphs run in
  onnxruntime CPU;
- TensorRT Model Optimizer's ONNX int4 (`awq_clip`, `rtn_dq`) in its own venv (`--modelopt`).
Each tool quantizes in its own process (wall time, peak RSS). Then TensorRT-RTX engines
(sm89, built on this CPU) of the fp16 model and of trtforge's W4A16 and W2A16 graphs with
the rest in fp16: sizes, and how much of the weight bytes saved in the ONNX the engine saves.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx

TRTFORGE = [(a, b) for b in (32, 128) for a in ("rtn", "awq", "gptq", "awq-gptq")]
ORT = [(a, b) for b in (32, 128) for a in ("default", "gptq")]
MODELOPT = ("awq_clip", "rtn_dq")


def write_data(name: str, folder: Path, calib_n: int, val_n: int) -> None:
    """Disjoint calibration and validation .npz folders of the model's real data (MiniLM: the same
    docstring sentences as the int8 rows)."""
    from bench_quantize_data import minilm_data  # beside this script

    from converter.demos.splits import demo_splits

    if name == "minilm":
        minilm_data(calib_n, val_n, folder)
        return

    calib, val, _ = demo_splits(name, calib_n, val_n, batch_size=32)
    for split, feeds in (("calib", calib), ("val", val)):
        (folder / split).mkdir()
        for i, batch in enumerate(feeds):
            np.savez(folder / split / f"{i:05d}.npz", **batch)


def quantize_worker(args) -> dict:
    """Runs in the subprocess: one tool's weight-only quantization of args.model into args.quantized."""
    from calibration.data import from_array_folder

    model = onnx.load(args.model)
    start = time.perf_counter()
    if args.worker == "trtforge-wo":
        from converter.core.model_io import save_model
        from passes.base import PassContext
        from passes.manager import PassSpec, run_passes

        data = from_array_folder(args.calib, model, batch_size=32)
        options = {"mode": args.mode, "block_size": args.block}
        if args.mode == "int4-wo":
            options["algorithm"] = args.method
        specs = [PassSpec("quantize", options)]
        if args.embeddings:  # the embedding tables too (quantize-embeddings)
            specs.append(PassSpec("quantize-embeddings", {"bits": int(args.embeddings), "block_size": args.block}))
        quantized, _ = run_passes(model, specs, PassContext(20, calibration=data))
        save_model(quantized, args.quantized)
    else:
        from onnxruntime.quantization import CalibrationDataReader
        from onnxruntime.quantization import matmul_nbits_quantizer as nbits

        class Reader(CalibrationDataReader):  # a list, not a generator: its GPTQ deep-copies the reader
            def __init__(self):
                self.batches, self.index = list(from_array_folder(args.calib, model, batch_size=32)), 0

            def get_next(self):
                self.index += 1
                return self.batches[self.index - 1] if self.index <= len(self.batches) else None

        if args.method == "gptq":
            config = nbits.GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader(), block_size=args.block)
        else:
            config = nbits.DefaultWeightOnlyQuantConfig(block_size=args.block, is_symmetric=False)
        quantizer = nbits.MatMulNBitsQuantizer(model, bits=4, block_size=args.block, algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(args.quantized, use_external_data_format=False)
    hwm = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": hwm}


def perplexity(path: Path, val: Path) -> float:
    """Next-token perplexity of the model's logits on the validation windows."""
    from calibration.data import from_array_folder
    from converter.core.ort_session import cpu_session

    model = onnx.load(str(path))
    session = cpu_session(model)
    nll, count = 0.0, 0
    for batch in from_array_folder(val, model, batch_size=32):
        logits = session.run(None, batch)[0].astype(np.float64)[:, :-1]
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        target = batch["input_ids"][:, 1:]
        nll -= float(np.take_along_axis(logp, target[..., None], -1).sum())
        count += target.size
    return math.exp(nll / count)


def run_modelopt_int4(model: Path, calib: Path, out: Path, method: str, python: Path) -> dict:
    """Model Optimizer's ONNX int4 quantization (its venv made by bench_quantize.run_modelopt)."""
    from bench_modelopt import MODELOPT_RUNNER  # beside this script

    from calibration.data import from_array_folder

    if not python.exists():
        return {"failed": "no Model Optimizer venv (run with --modelopt once)"}
    arrays: dict[str, list] = {}
    for batch in from_array_folder(calib, onnx.load(str(model), load_external_data=False), batch_size=32):
        for k, v in batch.items():
            arrays.setdefault(k, []).append(v)
    npz = out.with_suffix(".calib.npz")
    np.savez(npz, **{k: np.concatenate(v) for k, v in arrays.items()})
    argv = ["modelopt", "--onnx_path", str(model), "--quantize_mode", "int4", "--calibration_method", method]
    argv += ["--calibration_data", str(npz), "--calibration_eps", "cpu", "--output_path", str(out)]
    proc = subprocess.run(
        [str(python), "-c", MODELOPT_RUNNER.replace("ARGV", repr(argv))], capture_output=True, text=True, timeout=3600
    )
    if proc.returncode != 0 or not out.exists():
        return {"failed": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def weight_bytes(path: Path) -> int:
    from converter.core.model_io import weights_nbytes

    return weights_nbytes(onnx.load(str(path)))


def engines(name: str, folder: Path, fp32: Path, graphs: dict[str, Path]) -> list[dict]:
    """fp16 engine against W4A16 / W2A16 ones (rest fp16), and the share of the ONNX saving kept."""
    from bench_quantize import engine_sizes  # beside this script

    from converter.api import optimize
    from converter.backends import ShapeProfile

    half = {"fp16": folder / "wo_fp16.onnx"}
    optimize(fp32, half["fp16"], passes=[], precision="fp16")
    for label, path in graphs.items():
        half[label] = folder / f"{path.stem}_fp16.onnx"
        optimize(path, half[label], passes=[], precision="fp16")
    names = ("input_ids", "attention_mask", "token_type_ids") if name == "minilm" else ("input_ids",)
    profiles = {n: ShapeProfile((1, 64), (8, 64), (32, 64)) for n in names}
    rows = engine_sizes({f"{name} {label}": path for label, path in half.items()}, profiles)
    base = next((r for r in rows if r["model"] == f"{name} fp16" and "engine_mb" in r), None)
    for row, path in zip(rows, half.values(), strict=True):
        row["onnx_weight_mb"] = round(weight_bytes(path) / 1e6, 2)
        if base and "engine_mb" in row and row is not base:
            saved_onnx = base["onnx_weight_mb"] - row["onnx_weight_mb"]
            row["engine_saving_share"] = round((base["engine_mb"] - row["engine_mb"]) / saved_onnx, 3)
    return rows


def bench_weight_only(name: str, work: Path, tools: set[str], quick: bool, log, venv_python: Path):
    """(rows, engine rows) of one model: every tool's weight-only graph scored on the validation data."""
    from bench_quantize import run_worker, score  # beside this script

    from converter import api

    folder = work / name
    folder.mkdir()
    api.export(name, folder / "model.onnx")
    api.optimize(folder / "model.onnx", folder / "fp32.onnx", passes=["fold"])
    fp32 = folder / "fp32.onnx"
    calib_n, val_n = (64, 64) if quick else (512, 512)
    write_data(name, folder, calib_n, val_n)
    calib, val = folder / "calib", folder / "val"
    lm = name == "decoder-lm"
    base_ppl = perplexity(fp32, val) if lm else None
    results: list[dict] = []

    def add(tool: str, path: Path, run: dict) -> None:
        row = {"model": name, "tool": tool, "calib_samples": calib_n, "val_samples": val_n}
        row["metric"] = "perplexity" if lm else "mean_embedding_cosine"
        if "failed" in run:
            row.update(value=None, failed=run["failed"])
        else:
            s = score(fp32, path, val)
            row.update(s, calib_seconds=round(run["seconds"], 2), calib_peak_rss_mb=round(run["peak_rss_mb"], 1))
            row["weight_mb"] = round(weight_bytes(path) / 1e6, 3)
            row["value"] = s["mean_cosine"]
            if lm:
                ppl = perplexity(path, val)
                row.update(
                    value=round(ppl, 4), fp32_perplexity=round(base_ppl, 4), ppl_increase=round(ppl / base_ppl - 1, 5)
                )
        results.append(row)
        log(json.dumps(row))

    made = {}
    for algorithm, block in (TRTFORGE[4::2] if quick else TRTFORGE) if "trtforge" in tools else []:
        path = folder / f"trtforge_int4_{algorithm}_{block}.onnx"
        add(
            f"trtforge int4-wo {algorithm} block {block}",
            path,
            run_worker("trtforge-wo", fp32, calib, path, algorithm, mode="int4-wo", block=block),
        )
        made[f"W4A16 {algorithm} block {block}"] = path
    if "trtforge" in tools and not quick:
        path = folder / "trtforge_int2_32.onnx"
        add(
            "trtforge int2-wo block 32",
            path,
            run_worker("trtforge-wo", fp32, calib, path, "gptq", mode="int2-wo", block=32),
        )
        made["W2A16 block 32"] = path
    for bits in (8, 4) if "trtforge" in tools and name == "minilm" else []:  # its 23 MB word-embedding table
        path = folder / f"trtforge_int4_gptq_128_emb{bits}.onnx"
        add(
            f"trtforge int4-wo gptq block 128 + embeddings int{bits}",
            path,
            run_worker("trtforge-wo", fp32, calib, path, "gptq", mode="int4-wo", block=128, embeddings=bits),
        )
        made[f"W4A16 gptq block 128 + embeddings int{bits}"] = path
    for method, block in (ORT[:1] if quick else ORT) if "ort" in tools else []:
        path = folder / f"ort_nbits_{method}_{block}.onnx"
        label = "RTN (default, asymmetric)" if method == "default" else "GPTQ"
        add(
            f"onnxruntime MatMulNBits {label} block {block}",
            path,
            run_worker("ort-nbits", fp32, calib, path, method, block=block),
        )
    for method in MODELOPT if "modelopt" in tools else []:
        path = folder / f"modelopt_int4_{method}.onnx"
        add(f"tensorrt-model-optimizer int4 {method}", path, run_modelopt_int4(fp32, calib, path, method, venv_python))
    if quick or "trtforge" not in tools:
        return results, []
    keep = ("W4A16 gptq block 128", "W4A16 awq-gptq block 128", "W2A16 block 32")
    keep += tuple(f"W4A16 gptq block 128 + embeddings int{bits}" for bits in (8, 4))
    return results, engines(name, folder, fp32, {k: v for k, v in made.items() if k in keep and v.exists()})
