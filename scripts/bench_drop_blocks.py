"""Benchmark block dropping: one-shot Block Influence vs the iterative search vs attention-only.

On MiniLM (embedding cosine to the original model on validation sentences that the
calibration never saw) and on the decoder LM (perplexity on the second half of its
held-out text, calibrated on the first half), at 1, 2, 3 blocks' worth of parameters,
in one run. Every method chooses on the
calibration data only; the validation data only measures the choice.

- oneshot_bi: ShortGPT, remove the k blocks with the lowest Block Influence;
- oneshot_direct: the same, ranked by the direct measure (output change if removed);
- iterative: the search (passes/blocks/search.py: blocks and sub-layers, beam of
  3, refinement by exchanges) for the least calibration damage that saves at least
  oneshot_bi's parameters minus PARAM_TOLERANCE, i.e. the same parameter reduction:
  unit sets with the same weight matrices differ only in biases and LayerNorms (in
  the decoder LM two MLPs hold 1,024 parameters, 0.08 %, fewer than four attentions);
- iterative_greedy (full run): FinerCut's plain greedy over sub-layers, same target;
- attention_only: "What Matters in Transformers", the half of the attention
  sub-layers with the lowest BI; iterative_attention (full run): the same count
  chosen by the search, and iterative at attention_only's parameter reduction;
- oracle_validation (full run, one block's worth): the best set of at most three
  units with oneshot_bi's reduction chosen *on the validation data*; not a method but
  the upper bound any calibration-chosen set can reach at that level.

Rows: {"model", "method", "level", "removed", "params_saved_frac", "flops_saved_frac",
"metric", "value", "calib_damage" (what the searches minimise), ...} plus the
TensorRT-RTX network layer count of the pruned ONNX (and the engine size without
--quick). "comparisons" says per level whether iterative is strictly better than
oneshot_bi at the same reduction.

    python scripts/bench_drop_blocks.py --out bench_drop_blocks.json [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from converter.backends import BuildConfig, get_backend  # noqa: E402
from converter.core.model_io import save_model  # noqa: E402
from converter.demos.splits import demo_splits  # noqa: E402
from converter.pipelines.export import export_model  # noqa: E402
from converter.pipelines.model_ref import resolve_spec  # noqa: E402
from passes.blocks.config import DropConfig  # noqa: E402
from passes.blocks.discovery import BlockGraph, find_blocks  # noqa: E402
from passes.blocks.rewiring import canonical, remove_units  # noqa: E402
from passes.blocks.selection import Scored, score_units, select  # noqa: E402

MODELS = {
    # name: (metric, levels (blocks' worth), calibration / validation samples; the same with --quick)
    "minilm": ("embedding_cosine", [1, 2, 3], (128, 192), [2], (64, 96)),
    "decoder-lm": ("heldout_ppl", [1, 2, 3], (64, 256), [2], (48, 96)),
}
PARAM_TOLERANCE = 1e-3  # of the model's parameters (0.1 %): "the same reduction" up to bias / LayerNorm sizes
GREEDY = {"granularity": "sublayer", "beam": 1, "refine": False}  # FinerCut's plain greedy search


@dataclass
class Bench:
    """One model, scored once; every method's selection reuses the cached evaluations."""

    name: str
    metric: str
    model: onnx.ModelProto
    bg: BlockGraph
    calib: list
    val: list
    scored: Scored
    spec: Any
    path: Path
    work: Path
    backend: Any
    build: bool

    @property
    def key(self) -> str:
        return "ppl" if self.metric == "heldout_ppl" else "cosine"

    def better(self, a: float, b: float) -> bool:
        """`a` strictly better than `b` on this model's validation metric."""
        return a > b if self.key == "cosine" else a < b


def _trt(backend, path: Path, spec, build: bool) -> dict:
    info = {"trt_layers": backend.parse(path).num_layers}
    if build:
        with tempfile.TemporaryDirectory() as tmp:
            engine = backend.build(
                path, Path(tmp) / "m.engine", BuildConfig(profiles=spec.profiles, target_gpus=["sm89"])
            )
            info["engine_bytes"] = engine.sidecar["engine_bytes"]
    return info


def setup(name: str, quick: bool, work: Path, backend) -> Bench:
    metric, levels, sizes, quick_levels, quick_sizes = MODELS[name]
    spec = resolve_spec(name)
    path = export_model(spec, work / f"{name}.onnx").path
    model = onnx.load(path)
    bg = find_blocks(model)
    calib, val, note = demo_splits(name, *(quick_sizes if quick else sizes), batch_size=16)
    scored = score_units(model, bg, calib, val)
    print(f"{name}: {bg.message} ({note})", flush=True)
    return Bench(name, metric, model, bg, calib, val, scored, spec, path, work, backend, not quick)


def row(b: Bench, method: str, level: str, removed: list[str], seconds: float, **extra: Any) -> dict:
    """One result row, with the pruned ONNX parsed (and built) by TensorRT-RTX when it is installed."""
    saved = b.scored.costs.saved(removed)
    out = {
        "model": b.name,
        "method": method,
        "level": level,
        "removed": removed,
        "params_saved_frac": round(saved["params_saved_frac"], 5),
        "flops_saved_frac": round(saved["flops_saved_frac"], 5),
        "metric": b.metric,
        "value": b.scored.ev.metrics(removed, "val")[b.key],
        "calib_damage": b.scored.ev.damage(removed),
        "seconds": round(seconds, 2),
        **extra,
    }
    if b.backend:
        pruned = b.work / f"{b.name}.{method}.{level.replace('/', 'of').replace(' ', '_')}.onnx"
        save_model(remove_units(b.model, b.bg, removed), pruned)
        out.update(_trt(b.backend, pruned, b.spec, b.build))
    print(f"  {method:<20} {level:<11} {out['value']:.4f}  params -{out['params_saved_frac']:.2%}  "
          f"calib damage {out['calib_damage']:.4f}  {removed}  ({out['seconds']} s)", flush=True)  # fmt: skip
    return out


def run(b: Bench, method: str, level: str, config: DropConfig) -> dict:
    start = time.perf_counter()
    sel = select(b.model, b.bg, b.calib, b.val, config, b.scored)
    return row(b, method, level, sel.removed, time.perf_counter() - start, stopped=sel.stopped)


def oracle(b: Bench, level: str, saved: float) -> dict:
    """The best set of <= 3 units with `saved` +- PARAM_TOLERANCE chosen on the *validation* data (an upper bound)."""
    start = time.perf_counter()
    names = [u.name for u in b.bg.units("all")]
    sets = {tuple(canonical(b.bg, c)) for k in (1, 2, 3) for c in itertools.combinations(names, k)}
    equal = [list(s) for s in sets if abs(b.scored.costs.saved(s)["params_saved_frac"] - saved) <= PARAM_TOLERANCE]
    sign = -1 if b.key == "cosine" else 1
    best = min(equal, key=lambda s: sign * b.scored.ev.metrics(s, "val")[b.key])
    note = f"chosen on the validation data among {len(equal)} sets of <= 3 units: an upper bound, not a method"
    return row(b, "oracle_validation", level, best, time.perf_counter() - start, note=note)


def bench_model(name: str, quick: bool, work: Path, backend) -> list[dict]:
    start = time.perf_counter()
    b = setup(name, quick, work, backend)
    rows = [row(b, "original", "0", [], time.perf_counter() - start)]
    blocks = len(b.bg.blocks)
    for k in MODELS[name][3] if quick else MODELS[name][1]:
        level = f"{k}/{blocks}"
        bi = run(b, "oneshot_bi", level, DropConfig(method="oneshot", granularity="block", score="bi", remove=k))
        rows.append(bi)
        rows.append(run(b, "oneshot_direct", level, DropConfig(method="oneshot", score="direct", remove=k)))
        target = b.scored.costs.saved(bi["removed"])["params_saved_frac"] - PARAM_TOLERANCE
        rows.append(run(b, "iterative", level, DropConfig(target_params=target)))
        if not quick:
            rows.append(run(b, "iterative_greedy", level, DropConfig(target_params=target, **GREEDY)))
            if k == 1:
                rows.append(oracle(b, level, target + PARAM_TOLERANCE))
    half = f"{blocks // 2}/{blocks} attn"
    attn = run(b, "attention_only", half, DropConfig(method="oneshot", granularity="attention", remove=blocks // 2))
    rows.append(attn)
    if not quick:
        rows.append(run(b, "iterative_attention", half, DropConfig(granularity="attention", remove=blocks // 2)))
        target = b.scored.costs.saved(attn["removed"])["params_saved_frac"] - PARAM_TOLERANCE
        rows.append(run(b, "iterative", half, DropConfig(target_params=target)))
    for r in rows:
        r["baseline"] = rows[0]["value"]
    return rows


def comparisons(rows: list[dict]) -> list[dict]:
    """Per model and level: is iterative strictly better than one-shot BI, at the same parameter reduction?"""
    out = []
    for bi in (r for r in rows if r["method"] == "oneshot_bi"):
        same = [r for r in rows if r["model"] == bi["model"] and r["level"] == bi["level"]]
        it = next(r for r in same if r["method"] == "iterative")
        best = next((r for r in same if r["method"] == "oracle_validation"), None)
        higher_is_better = bi["metric"] == "embedding_cosine"
        better = it["value"] > bi["value"] if higher_is_better else it["value"] < bi["value"]
        same_reduction = it["params_saved_frac"] >= bi["params_saved_frac"] - PARAM_TOLERANCE
        out.append({
            "model": bi["model"], "level": bi["level"], "metric": bi["metric"],
            "oneshot_bi": bi["value"], "iterative": it["value"],
            "params_saved_frac": [bi["params_saved_frac"], it["params_saved_frac"]],
            "calib_damage": [bi["calib_damage"], it["calib_damage"]],
            "same_reduction": bool(same_reduction),
            "iterative_strictly_better": bool(better and same_reduction),
            **({"oracle_validation": best["value"], "oracle_removed": best["removed"]} if best else {}),
        })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_drop_blocks.json"))
    parser.add_argument("--quick", action="store_true", help="one level, fewer methods and samples; no engine builds")
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
        "param_tolerance": PARAM_TOLERANCE,
        "quick": args.quick,
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for c in result["comparisons"]:
        bound = f"; best any set reaches on validation {c['oracle_validation']:.4f}" if "oracle_validation" in c else ""
        print(f"{c['model']} {c['level']}: iterative {c['iterative']:.4f} vs oneshot_bi {c['oneshot_bi']:.4f} "
              f"-> strictly better: {c['iterative_strictly_better']}{bound}")  # fmt: skip
    print(f"wrote {args.out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
