"""Benchmark: trtforge on Llama-shaped graphs of growing depth vs onnxslim, onnxsim and
onnxruntime's offline optimizer, each tool in its own process, one run.

The graphs are exported the way a user's model would be: `trtforge export` of a
generated `transformers.LlamaForCausalLM` (scripts/llama_spec.py: TinyLlama-1.1B shape,
fp16, random weights; 22 layers is the full 1.1B model), profile input_ids
1x8/1x128/1x512. For each depth and tool it records wall time and peak RSS measured from
outside (the child's VmHWM, polled from /proc), the node count after, and on the smallest
depths the max |logits difference| against the exported graph (onnxruntime CPU, one random
sequence). Every graph, at every depth, keeps its weights in an external-data file (as a
model past 2 GB must), so small depths take the big one's code paths. On the deepest graph
of the run it also times `quantize --mode int4-wo`, `quantize --mode int8` (4 random
sequences as calibration data), `drop-blocks --remove 2` and a TensorRT-RTX engine build.

    python scripts/bench_scale.py --out bench_scale.json [--quick] [--layers 2,4,8,16,22]
        [--work DIR [--reuse-exports]]

`--quick` runs 2 and 4 layers (a few minutes). Output: {"results": [{"model", "layers",
"weight_bytes", "tool", "seconds", "peak_rss_bytes", "nodes", "max_abs_diff", "error"}...],
"goals": {...}, "environment": {...}} and a PNG plot of time and memory against layers
beside the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from converter.core.model_checks import tensor_nbytes  # noqa: E402
from converter.core.model_io import EXTERNAL_DATA_ENV  # noqa: E402

PROFILE = "input_ids:1x8/1x128/1x512"
# Every depth keeps its weights in an external-data file, as every model past protobuf's 2 GB
# must: the small depths then take the big one's route (lazy loading, streamed saves), so
# their time and memory extrapolate to it. trtforge's own default is external past 1.8 GB.
EXTERNAL_FROM = 1 << 20
DIFF_UP_TO_LAYERS = 4  # output differences only where every tool's graph runs in seconds

# Each peer as a small program: argv[1] the source, argv[2] the destination.
PEERS = {
    "onnxslim": ("import sys, onnxslim\nonnxslim.slim(sys.argv[1], sys.argv[2])\n"),
    "onnxsim": (
        "import sys, onnx, onnxsim\n"
        "model, ok = onnxsim.simplify(onnx.load(sys.argv[1]))\n"
        "assert ok, 'onnxsim could not validate its result'\n"
        "onnx.save(model, sys.argv[2], save_as_external_data=True, location=sys.argv[2].rsplit('/', 1)[-1] + '.data')\n"
    ),
    "onnxruntime (extended, offline)": (
        "import os, sys, onnxruntime as ort\n"
        "opts = ort.SessionOptions()\n"
        "opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED\n"
        "opts.optimized_model_filepath = sys.argv[2]\n"
        "opts.add_session_config_entry('session.optimized_model_external_initializers_file_name',\n"
        "                              os.path.basename(sys.argv[2]) + '.data')\n"
        "opts.add_session_config_entry('session.optimized_model_external_initializers_min_size_in_bytes', '1024')\n"
        "ort.InferenceSession(sys.argv[1], opts, providers=['CPUExecutionProvider'])\n"
    ),
}


def _high_water_mark(pid: int) -> int:
    """The process's peak resident set (VmHWM) so far, in bytes; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measured(argv: list[str], cwd: Path, timeout: float = 3600) -> dict[str, Any]:
    """Run `argv` as a child process: wall seconds, its peak RSS, exit status.

    The peak is the child's own VmHWM, read from /proc every 20 ms until it exits. Not
    its rusage: Linux carries ru_maxrss across fork and exec, so every child would
    report at least this benchmark's own footprint.
    """
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", EXTERNAL_DATA_ENV: str(EXTERNAL_FROM)}
    with tempfile.TemporaryFile("w+") as stderr:  # a file, not a pipe: a chatty child never blocks
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        peak = 0
        while process.poll() is None:
            peak = max(peak, _high_water_mark(process.pid))
            if time.perf_counter() - start > timeout:
                process.kill()
            time.sleep(0.02)
        stderr.seek(0)
        err = stderr.read()
    return {
        "seconds": round(time.perf_counter() - start, 2),
        "peak_rss_bytes": peak,
        "error": None
        if process.returncode == 0
        else (err.strip().splitlines() or [f"exit {process.returncode}"])[-1][:300],
    }


def header(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=False)


def weight_bytes(path: Path) -> int:
    return sum(tensor_nbytes(init) or 0 for init in header(path).graph.initializer)


def max_abs_diff(reference: Path, candidate: Path) -> float | None:
    """Max |logits difference| on one random 16-token sequence (onnxruntime CPU, no fusions)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ids = np.random.default_rng(0).integers(0, 32000, (1, 16), dtype=np.int64)
    outputs = []
    for path in (reference, candidate):
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: ids})[0].astype(np.float64))
    return float(np.max(np.abs(outputs[0] - outputs[1])))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "converter.cli", *args, "-q"]


def _clear_outputs(folder: Path, keep: Path) -> None:
    """Remove what an earlier run wrote into `folder`, except the export `keep` (and its data)."""
    import shutil

    for path in folder.iterdir():
        if path.name not in (keep.name, keep.name + ".data"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def bench_depth(layers: int, work: Path, reuse: bool = False) -> list[dict[str, Any]]:
    folder = work / f"L{layers}"
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "model.onnx"
    spec = f"scripts.llama_spec:layers_{layers}"
    if reuse and source.exists():  # iterating on the tools: the export of an earlier run, not measured
        _clear_outputs(folder, source)
        export = {"seconds": None, "peak_rss_bytes": None, "error": None, "reused": True}
    else:
        export = _export(spec, source, folder)
    rows = [
        {"tool": "trtforge export", **export, "nodes": len(header(source).graph.node) if not export["error"] else None}
    ]
    return _optimizers(layers, folder, source, rows)


def _export(spec: str, source: Path, folder: Path) -> dict[str, Any]:
    return measured(
        cli(
            "export",
            spec,
            "--shapes",
            PROFILE,
            "--dtypes",
            "input_ids:int64",
            "--output-names",
            "logits",
            "-o",
            str(source),
        ),
        folder,
    )


def _optimizers(layers: int, folder: Path, source: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """trtforge optimize and each peer on the exported graph `source`."""
    if rows[0]["error"]:
        return [{"model": f"llama-{layers}l", "layers": layers, "weight_bytes": None, **row} for row in rows]
    runs = {
        "trtforge optimize": cli("optimize", str(source), "-o", str(folder / "trtforge.onnx")),
        # the opset-23 fusions (Attention with GQA, RMSNormalization), for TensorRT >= 10.15 / TensorRT-RTX
        "trtforge optimize fold,fuse-opset23": cli(
            "optimize", str(source), "--passes", "fold,fuse-opset23", "-o", str(folder / "trtforge23.onnx")
        ),
    }
    for name, program in PEERS.items():
        runs[name] = [sys.executable, "-c", program, str(source), str(folder / f"{name.split()[0]}.onnx")]
    for name, argv in runs.items():
        result = measured(argv, folder)
        out = Path(argv[argv.index("-o") + 1] if "-o" in argv else argv[-1])
        row = {"tool": name, **result, "nodes": None, "max_abs_diff": None}
        if not result["error"] and out.exists():
            row["nodes"] = len(header(out).graph.node)
            if layers <= DIFF_UP_TO_LAYERS:
                try:
                    row["max_abs_diff"] = max_abs_diff(source, out)
                except Exception as exc:  # a peer's graph onnxruntime cannot run: say so
                    row["max_abs_diff_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        rows.append(row)
        if out.name != "trtforge.onnx":  # measured: gone (22 layers x 7 graphs would be 15 GB of disk)
            for written in (out, out.with_name(out.name + ".data")):
                written.unlink(missing_ok=True)
    size = weight_bytes(source)
    return [{"model": f"llama-{layers}l", "layers": layers, "weight_bytes": size, **row} for row in rows]


def bench_lossy(layers: int, work: Path) -> list[dict[str, Any]]:
    """int4 weight-only and int8 quantization, dropping two blocks, and a TensorRT-RTX engine build
    (one target, the fp16 graph as optimized) of the deepest graph."""
    folder = work / f"L{layers}"
    source = folder / "trtforge.onnx"
    calib = folder / "calib.npz"
    # 4 sequences of 32 tokens: drop-blocks runs the model ~2 x units times on them (22 layers: 66 units)
    np.savez(calib, input_ids=np.random.default_rng(1).integers(0, 32000, (4, 32), dtype=np.int64))
    runs = {
        "trtforge quantize int4-wo": cli("quantize", str(source), "--mode", "int4-wo", "-o", str(folder / "int4.onnx")),
        "trtforge quantize int8": cli(
            "quantize", str(source), "--mode", "int8", "--calib", str(calib), "-o", str(folder / "int8.onnx")
        ),
        "trtforge drop-blocks --remove 2": cli(
            "drop-blocks",
            str(source),
            "--remove",
            "2",
            "--method",
            "oneshot",
            "--load-inputs",
            str(calib),
            "--calibration-samples",
            "4",
            "--no-build",  # the engines before/after are the build benchmark's business
            "-o",
            str(folder / "pruned.onnx"),
        ),
    }
    runs["trtforge build (TensorRT-RTX, sm89)"] = cli(
        "build", str(source), "--target-gpu", "sm89", "-o", str(folder / "model.engine")
    )
    rows = []
    for name, argv in runs.items():
        result = measured(argv, folder)
        out = Path(argv[argv.index("-o") + 1])
        written = not result["error"] and out.exists()
        if out.suffix == ".engine":
            result["engine_bytes"] = out.stat().st_size if written else None
        nodes = len(header(out).graph.node) if written and out.suffix == ".onnx" else None
        rows.append(
            {
                "model": f"llama-{layers}l",
                "layers": layers,
                "weight_bytes": weight_bytes(source),
                "tool": name,
                **result,
                "nodes": nodes,
                "max_abs_diff": None,
            }
        )
        for made in (out, out.with_name(out.name + ".data"), out.with_name(out.name + ".json")):
            made.unlink(missing_ok=True)  # measured; a 1.1B model's outputs fill a disk fast
    return rows


def goals(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals on the deepest graph of the run (22 layers in a full run)."""
    deepest = max(r["layers"] for r in results)
    rows = {r["tool"]: r for r in results if r["layers"] == deepest and not r["error"]}
    ours, slim = rows.get("trtforge optimize"), rows.get("onnxslim")
    found: dict[str, Any] = {"layers": deepest}
    if ours and slim:
        found["nodes_le_onnxslim"] = ours["nodes"] <= slim["nodes"]
        found["speedup_vs_onnxslim"] = round(slim["seconds"] / ours["seconds"], 2)
        found["at_least_2x_faster_than_onnxslim"] = found["speedup_vs_onnxslim"] >= 2.0
    if ours:
        found["optimize_rss_over_weights"] = round(ours["peak_rss_bytes"] / ours["weight_bytes"], 2)
        found["optimize_rss_le_1.3x_weights"] = found["optimize_rss_over_weights"] <= 1.3
    for tool in ("trtforge quantize int4-wo", "trtforge quantize int8", "trtforge drop-blocks --remove 2"):
        if tool in rows:
            ratio = rows[tool]["peak_rss_bytes"] / rows[tool]["weight_bytes"]
            found[f"{tool} rss_over_weights"] = round(ratio, 2)
            found[f"{tool} rss_le_1.5x_weights"] = ratio <= 1.5
    return found


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for tool in dict.fromkeys(r["tool"] for r in results):
        rows = sorted(
            (r for r in results if r["tool"] == tool and not r["error"] and r["seconds"] is not None),
            key=lambda r: r["layers"],
        )
        if len(rows) < 2:
            continue
        xs = [r["layers"] for r in rows]
        left.plot(xs, [r["seconds"] for r in rows], marker="o", label=tool)
        right.plot(xs, [r["peak_rss_bytes"] / 2**30 for r in rows], marker="o", label=tool)
    weights = sorted({(r["layers"], r["weight_bytes"]) for r in results if r["weight_bytes"]})
    right.plot([w[0] for w in weights], [w[1] / 2**30 for w in weights], "k--", label="weight bytes")
    left.set(xlabel="layers", ylabel="seconds", title="wall time")
    right.set(xlabel="layers", ylabel="GiB", title="peak RSS")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _print(row: dict[str, Any]) -> None:
    if row.get("reused"):
        print(f"{row['model']:<10} {row['tool']:<34} (reused)", flush=True)
        return
    print(
        f"{row['model']:<10} {row['tool']:<34} {row['seconds']:>8.1f} s "
        f"{row['peak_rss_bytes'] / 2**30:>6.2f} GiB  nodes {row['nodes']}  "
        f"diff {row.get('max_abs_diff')}  {row['error'] or ''}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_scale.json"))
    parser.add_argument("--quick", action="store_true", help="2 and 4 layers only")
    parser.add_argument("--layers", default="2,4,8,16,22", help="comma-separated depths")
    parser.add_argument("--work", type=Path, help="keep the graphs here (default: a temporary folder)")
    parser.add_argument(
        "--reuse-exports", action="store_true", help="with --work: reuse its exported graphs (export not measured)"
    )
    args = parser.parse_args()
    depths = [2, 4] if args.quick else [int(d) for d in args.layers.split(",")]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trtforge-bench-scale-") as tmp:
        work = args.work or Path(tmp)
        for layers in depths:
            rows = bench_depth(layers, work, args.reuse_exports)
            results += rows
            for row in rows:
                _print(row)
        lossy = bench_lossy(depths[-1], work)
        for row in lossy:
            _print(row)
        results += lossy
    environment = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        **{
            pkg: metadata.version(pkg)
            for pkg in ("onnx", "onnxruntime", "onnxslim", "onnxsim", "torch", "transformers")
        },
    }
    report = {"results": results, "goals": goals(results), "environment": environment}
    args.out.write_text(json.dumps(report, indent=1))
    plot(results, args.out.with_suffix(".png"))
    print(json.dumps(report["goals"], indent=1))


if __name__ == "__main__":
    main()
