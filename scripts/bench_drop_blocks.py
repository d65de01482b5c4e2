"""Benchmark block dropping: one-shot Block Influence vs iterative sub-layer search vs attention-only.

On MiniLM (embedding cosine to the original model on validation sentences that the
calibration never saw) and on the decoder LM (perplexity on its held-out text), at
several removal levels, in one run:

- oneshot_bi: ShortGPT, remove the k blocks with the lowest Block Influence;
- oneshot_direct: the same, ranked by the direct measure (output change if removed);
- iterative: FinerCut-style greedy over attention and MLP sub-layers, re-scored after
  every removal, until it saves at least 99 % of the parameters oneshot_bi saved at
  that level (so the two are compared at the same parameter reduction);
  iterative_with_blocks: the same with whole blocks as candidates too;
- attention_only: "What Matters in Transformers", the half of the attention
  sub-layers with the lowest BI; iterative_attention: the same count chosen greedily.

Each row also has the TensorRT-RTX network layer count of the pruned ONNX (and the
engine size without --quick).

    python scripts/bench_drop_blocks.py --out bench_drop_blocks.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calibration.block_data import demo_splits  # noqa: E402
from calibration.block_scores import Costs, GatedSession  # noqa: E402
from calibration.block_selection import DropConfig, Evaluator, select, unit_scores  # noqa: E402
from converter.backends import BuildConfig, get_backend  # noqa: E402
from converter.export import export_model  # noqa: E402
from converter.model_io import save_model  # noqa: E402
from converter.models import resolve_spec  # noqa: E402
from passes.drop_blocks import remove_units  # noqa: E402
from passes.transformer_blocks import find_blocks  # noqa: E402

MODELS = {
    # name: (metric, levels (blocks removed), calibration / validation samples; the same with --quick)
    "minilm": ("embedding_cosine", [1, 2, 3], (128, 192), [2], (64, 96)),
    "decoder-lm": ("heldout_ppl", [1, 2, 3], (64, 256), [2], (48, 96)),
}


def _trt(backend, path: Path, spec, build: bool) -> dict:
    info = {"trt_layers": backend.parse(path).num_layers}
    if build:
        with tempfile.TemporaryDirectory() as tmp:
            engine = backend.build(
                path, Path(tmp) / "m.engine", BuildConfig(profiles=spec.profiles, target_gpus=["sm89"])
            )
            info["engine_bytes"] = engine.sidecar["engine_bytes"]
    return info


def bench_model(name: str, quick: bool, work: Path, backend) -> list[dict]:
    metric, levels, (n_calib, n_val), quick_levels, quick_sizes = MODELS[name]
    levels, (n_calib, n_val) = (quick_levels, quick_sizes) if quick else (levels, (n_calib, n_val))
    spec = resolve_spec(name)
    start = time.perf_counter()
    path = export_model(spec, work / f"{name}.onnx").path
    model = onnx.load(path)
    bg = find_blocks(model)
    calib, val, data_note = demo_splits(name, n_calib, n_val, batch_size=16)
    ev = Evaluator(model, bg, calib, val)
    probe = GatedSession(model, bg, probe=True)
    scores = unit_scores(ev, probe, calib)
    costs = Costs.of(model, bg, probe.matmul_flops(calib[0]))
    del probe
    key = "ppl" if metric == "heldout_ppl" else "cosine"
    baseline = ev.metrics([], "val")[key]
    setup = round(time.perf_counter() - start, 2)
    print(f"{name}: {bg.message}; baseline {metric} {baseline:.4f}; setup {setup} s ({data_note})", flush=True)
    original = _trt(backend, path, spec, not quick) if backend else {}
    rows = [{"model": name, "method": "original", "level": "0", "removed": [], "params_saved_frac": 0.0,
             "flops_saved_frac": 0.0, "metric": metric, "value": baseline, **original}]  # fmt: skip

    def run(method: str, level: str, config: DropConfig) -> dict:
        t0 = time.perf_counter()
        sel = select(model, bg, calib, val, config, ev, scores, costs)
        row = {
            "model": name,
            "method": method,
            "level": level,
            "removed": sel.removed,
            "params_saved_frac": round(sel.saved["params_saved_frac"], 5),
            "flops_saved_frac": round(sel.saved["flops_saved_frac"], 5),
            "metric": metric,
            "value": sel.after[key],
            "baseline": baseline,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if backend:
            pruned = work / f"{name}.{method}.{level.replace('/', 'of')}.onnx"
            save_model(remove_units(model, bg, sel.removed), pruned)
            row.update(_trt(backend, pruned, spec, not quick))
        rows.append(row)
        print(
            f"  {method:<20} {level:<12} {row['value']:.4f}  params -{row['params_saved_frac']:.1%}  {sel.removed}",
            flush=True,
        )
        return row

    blocks = len(bg.blocks)
    for k in levels:
        level = f"{k}/{blocks}"
        bi = run("oneshot_bi", level, DropConfig(method="oneshot", granularity="block", score="bi", remove=k))
        run("oneshot_direct", level, DropConfig(method="oneshot", granularity="block", score="direct", remove=k))
        target = bi["params_saved_frac"] * 0.99
        run("iterative", level, DropConfig(method="iterative", target_params=target))
        if not quick:
            run("iterative_with_blocks", level, DropConfig(method="iterative", granularity="all", target_params=target))
    half = f"{blocks // 2}/{blocks} attn"
    attn = run(
        "attention_only", half, DropConfig(method="oneshot", granularity="attention", score="bi", remove=blocks // 2)
    )
    if not quick:
        run("iterative_attention", half, DropConfig(method="iterative", granularity="attention", remove=blocks // 2))
        run("iterative", half, DropConfig(method="iterative", target_params=attn["params_saved_frac"] * 0.99))
    return rows


def comparisons(rows: list[dict]) -> list[dict]:
    """Per model and level: is the iterative search strictly better than one-shot BI at the same reduction?"""
    out = []
    for bi in (r for r in rows if r["method"] == "oneshot_bi"):
        it = next(
            r for r in rows if r["method"] == "iterative" and r["model"] == bi["model"] and r["level"] == bi["level"]
        )
        higher_is_better = bi["metric"] == "embedding_cosine"
        better = it["value"] > bi["value"] if higher_is_better else it["value"] < bi["value"]
        out.append({"model": bi["model"], "level": bi["level"], "oneshot_bi": bi["value"], "iterative": it["value"],
                    "params_saved_frac": [bi["params_saved_frac"], it["params_saved_frac"]],
                    "iterative_strictly_better": bool(better)})  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_drop_blocks.json"))
    parser.add_argument("--quick", action="store_true", help="fewer levels, methods and samples; no engine builds")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        backend = get_backend("tensorrt-rtx")
    except Exception as exc:  # the bench still measures accuracy without a TensorRT backend
        print(f"TensorRT-RTX unavailable ({exc}): no layer counts", flush=True)
        backend = None
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="trtforge-bench-drop-") as tmp:
        for name in args.models.split(","):
            rows += bench_model(name, args.quick, Path(tmp), backend)
    result = {
        "results": rows,
        "comparisons": comparisons(rows),
        "quick": args.quick,
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for c in result["comparisons"]:
        print(f"{c['model']} {c['level']}: iterative {c['iterative']:.4f} vs oneshot_bi {c['oneshot_bi']:.4f} "
              f"-> strictly better: {c['iterative_strictly_better']}")  # fmt: skip
    print(f"wrote {args.out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
