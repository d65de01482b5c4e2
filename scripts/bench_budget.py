"""Benchmark the joint budget search against each single technique under the same budget.

On MiniLM (mean embedding cosine to the source, budgets 0.99 and 0.98) and the trained
decoder LM (held-out perplexity, budgets +5 % and +15 %), for the objectives weight
bytes and FLOPs, in one run, on one calibration / validation split (the search's own:
converter/pipelines/budget/data.py, disjoint by construction and checked):

- joint: `convert --budget`'s search (converter/pipelines/budget/choose.search_recipe);
- quantize_only: the quantize pass's own budget mode (`max_cosine_drop`: the fewest most
  sensitive layers kept in fp32) for int8 (SmoothQuant alpha off and 0.8), int4-wo (AWQ)
  and int8-wo, the rest fp32; its cosine budget is tightened (x0.5, three times) until the
  result meets the budget on validation; per objective, the variant smallest in it among
  those that meet the budget is reported (so int8 W8A8 for FLOPs, a weight format for bytes);
- drop_only: drop-blocks' budget mode (iterative search, validated), the rest fp32;
- fp16_only: the precision pass alone.

Every row is measured here on the validation data (value, meets_budget), and costed on
its own graph: weight_bytes, flops (fp16-equivalent: int8/fp8 activations count half,
fp32 double; raw_flops beside it), and engine_bytes of a TensorRT-RTX engine for sm89
(not with --quick). "comparisons" says per model x budget x objective whether the joint
result meets the budget and is strictly smaller than the best single technique that does.
Joint rows carry every configuration the search evaluated and its time.

    python scripts/bench_budget.py --out bench_budget.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calibration.data import from_feeds  # noqa: E402
from converter.backends import BuildConfig, get_backend  # noqa: E402
from converter.core.errors import TrtforgeError  # noqa: E402
from converter.core.model_io import opset_of, save_model, sha256_model  # noqa: E402
from converter.demos.models import DEMOS  # noqa: E402
from converter.pipelines.budget.choose import BudgetOptions, search_recipe  # noqa: E402
from converter.pipelines.budget.costs import graph_cost, node_flops  # noqa: E402
from converter.pipelines.budget.data import Validator, search_data  # noqa: E402
from converter.pipelines.budget.spec import Budget  # noqa: E402
from converter.pipelines.export import export_model  # noqa: E402
from converter.pipelines.generation_check import engine_shapes  # noqa: E402
from converter.pipelines.recipe import Recipe  # noqa: E402
from passes.base import PassContext  # noqa: E402
from passes.blocks.config import DropConfig  # noqa: E402
from passes.blocks.discovery import find_blocks  # noqa: E402
from passes.blocks.rewiring import remove_units  # noqa: E402
from passes.blocks.scores import language_model_io  # noqa: E402
from passes.blocks.selection import select  # noqa: E402
from passes.manager import run_passes  # noqa: E402
from passes.registry import PassSpec  # noqa: E402

MODELS = {"minilm": ["cosine>=0.99", "cosine>=0.98"], "decoder-lm": ["ppl<=+5%", "ppl<=+15%"]}
QUICK = {"minilm": ["cosine>=0.98"], "decoder-lm": ["ppl<=+15%"]}
OBJECTIVES = {"weight-bytes": "weight_bytes", "flops": "flops"}
QUANT_MODES = [("int8", None), ("int8", 0.8), ("int4-wo", None), ("int8-wo", None)]
QUICK_QUANT_MODES = [("int8", 0.8)]
QUICK_SEARCH_SECONDS = 45.0  # --quick: the joint search's time budget (the best so far is used)
QUANT_START = {"cosine": lambda b: 1.0 - b.limit, "ppl": lambda b: b.limit / 10.0}
TARGET = "sm89"


class Bench:
    """One model: its source, the split, the validator, and the graphs measured (and built) once each."""

    def __init__(self, name: str, work: Path, val_samples: int, quick: bool):
        self.name, self.work, self.quick, self.build = name, work, quick, not quick
        self.spec = DEMOS[name]()
        self.source = onnx.load(str(export_model(self.spec, work / f"{name}.onnx").path))
        self.data = search_data(self.source, self.spec, 2, 4, val_samples)
        self.calib = from_feeds(self.data.calib, self.data.source)
        self.ctx = PassContext(opset=opset_of(self.source), calibration=self.calib)
        self.base = run_passes(self.source, [PassSpec("fold")], self.ctx)[0]
        self.flops = node_flops(self.base, self.data.val[0])
        self.validator = Validator(self.source, self.data.val, language_model_io(self.source))
        self.engines: dict[str, int | None] = {}

    def passes(self, specs: list[PassSpec], model: onnx.ModelProto | None = None) -> onnx.ModelProto:
        return run_passes(model or self.base, specs, self.ctx)[0]

    def row(
        self, budget: Budget, method: str, model: onnx.ModelProto, precision: str, build: bool = True, **extra
    ) -> dict[str, Any]:
        metrics = self.validator.metrics(model)
        value = budget.value(metrics, self.validator.base)
        cost = graph_cost(model, self.flops, precision, TARGET)
        return {
            "model": self.name,
            "budget": budget.text,
            "method": method,
            "value": round(value, 6),
            "meets_budget": budget.met(value),
            "weight_bytes": cost.weight_bytes,
            "flops": round(cost.weighted_flops),
            "raw_flops": round(cost.flops),
            "engine_bytes": self.engine_bytes(model) if build else None,
            **extra,
        }

    def engine_bytes(self, model: onnx.ModelProto) -> int | None:
        """TensorRT-RTX engine size for sm89 (each distinct graph built once); None with --quick."""
        if not self.build:
            return None
        key = sha256_model(model)
        if key not in self.engines:
            path = save_model(model, self.work / f"{key[:16]}.onnx")
            shapes = engine_shapes(model, dict(self.spec.profiles))
            try:
                engine = get_backend("tensorrt-rtx").build(
                    path, self.work / f"{key[:16]}.engine", BuildConfig(**shapes, target_gpus=[TARGET])
                )
                self.engines[key] = engine.sidecar["engine_bytes"]
            except TrtforgeError as exc:
                print(f"  engine build failed: {exc}", file=sys.stderr)
                self.engines[key] = None
        return self.engines[key]


def joint(bench: Bench, budget: Budget, objective: str, seconds: float) -> dict[str, Any]:
    start = time.perf_counter()
    options = BudgetOptions(budget, objective, seconds, val_samples=len(bench.data.val) * 4)
    chosen, section = search_recipe(bench.source, bench.spec, Recipe(), options, None, lambda _m: None)
    graph = bench.passes(chosen.effective_passes(), bench.source)
    return bench.row(
        budget,
        "joint",
        graph,
        chosen.precision,
        seconds=round(time.perf_counter() - start, 2),
        search_seconds=section["seconds"],
        chosen=section["chosen"]["label"],
        evaluated=section["evaluated"],
        pareto=section["pareto"],
    )


def quantize_only(bench: Bench, budget: Budget, objectives: list[str]) -> list[dict[str, Any]]:
    """The quantize pass's budget mode per format, tightened until it meets the budget on validation;
    per objective, the variant smallest in it among those that meet the budget (one row each)."""
    start, tried = time.perf_counter(), []
    for mode, alpha in QUICK_QUANT_MODES if bench.quick else QUANT_MODES:
        drop = QUANT_START[budget.metric](budget)
        for _ in range(4):
            options = {"mode": mode, "method": "minmax", "max_cosine_drop": drop}
            options["sensitivity_samples"] = 16 if bench.quick else 64
            if mode == "int4-wo":
                options["algorithm"] = "awq"
            specs = ([PassSpec("smoothquant", {"alpha": alpha})] if alpha else []) + [PassSpec("quantize", options)]
            graph = bench.passes(specs)
            row = bench.row(budget, "quantize_only", graph, "fp32", build=False)
            label = f"{mode}{f' sq{alpha}' if alpha else ''} max_cosine_drop {drop:g}"
            tried.append((label, graph, row))
            if row["meets_budget"]:
                break
            drop /= 2
    seconds = round(time.perf_counter() - start, 2)
    rows = []
    for objective in objectives:
        key = OBJECTIVES[objective]
        met = [t for t in tried if t[2]["meets_budget"]] or tried[-1:]
        label, graph, row = min(met, key=lambda t: t[2][key])
        rows.append(
            {
                **row,
                "objective": objective,
                "engine_bytes": bench.engine_bytes(graph),
                "chosen": label,
                "seconds": seconds,
                "evaluated": [{"variant": t[0], **_brief(t[2])} for t in tried],
            }
        )
    return rows


def drop_only(bench: Bench, budget: Budget) -> dict[str, Any]:
    start = time.perf_counter()
    config = (
        DropConfig(min_cosine=budget.limit) if budget.metric == "cosine" else DropConfig(max_ppl_increase=budget.limit)
    )
    if bench.quick:  # FinerCut's plain greedy: one path, no refinement
        config = replace(config, beam=1, refine=False)
    bg = find_blocks(bench.base)
    chosen = select(bench.base, bg, bench.data.calib, bench.data.val, config)
    graph = remove_units(bench.base, bg, chosen.removed)
    return bench.row(
        budget, "drop_only", graph, "fp32", seconds=round(time.perf_counter() - start, 2), chosen=chosen.removed
    )


def fp16_only(bench: Bench, budget: Budget) -> dict[str, Any]:
    start = time.perf_counter()
    graph = bench.passes([PassSpec("precision", {"target": "fp16"})])
    return bench.row(budget, "fp16_only", graph, "fp16", seconds=round(time.perf_counter() - start, 2))


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("value", "meets_budget", "weight_bytes", "flops")}


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model x budget x objective: the joint result meets the budget and is strictly smaller in the
    objective than the best single technique that meets it (quantize-only: its variant best in that objective)."""
    out = []
    for row in (r for r in rows if r["method"] == "joint"):
        key = OBJECTIVES[row["objective"]]
        singles = [
            r
            for r in rows
            if r["method"] != "joint"
            and (r["model"], r["budget"]) == (row["model"], row["budget"])
            and r.get("objective", row["objective"]) == row["objective"]
            and r["meets_budget"]
        ]
        best = min(singles, key=lambda r: r[key], default=None)
        out.append(
            {
                "model": row["model"],
                "budget": row["budget"],
                "objective": row["objective"],
                "joint": row[key],
                "joint_chosen": row["chosen"],
                "best_single": best and {"method": best["method"], "chosen": best.get("chosen"), key: best[key]},
                "ratio": round(row[key] / best[key], 4) if best else None,
                "joint_meets_budget": row["meets_budget"],
                "strictly_smaller": bool(row["meets_budget"] and best and row[key] < best[key]),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_budget.json"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one budget per model, weight bytes only, no engines, 32 validation samples, a 45 s search; "
        "the single techniques searched more cheaply",
    )
    parser.add_argument("--search-seconds", type=float, default=600.0)
    args = parser.parse_args()
    started, rows = time.perf_counter(), []
    models = QUICK if args.quick else MODELS
    objectives = ["weight-bytes"] if args.quick else list(OBJECTIVES)
    with tempfile.TemporaryDirectory(prefix="trtforge-bench-budget-") as tmp:
        for name, budgets in models.items():
            print(f"{name}: exporting, splitting data", flush=True)
            bench = Bench(name, Path(tmp), 32 if args.quick else 128, args.quick)
            for text in budgets:
                budget = Budget.parse(text)
                singles = [
                    *quantize_only(bench, budget, objectives),
                    drop_only(bench, budget),
                    fp16_only(bench, budget),
                ]
                for objective in objectives:
                    seconds = min(args.search_seconds, QUICK_SEARCH_SECONDS) if args.quick else args.search_seconds
                    found = joint(bench, budget, objective, seconds)
                    rows.append({**found, "objective": objective})
                    print(f"  {text} {objective}: joint {found['chosen']} {_brief(found)}", flush=True)
                for row in singles:
                    rows.append(row)
                    print(f"  {text} {row['method']}: {row.get('chosen', '')} {_brief(row)}", flush=True)
    result = {
        "benchmark": "budget",
        "quick": args.quick,
        "target": TARGET,
        "seconds": round(time.perf_counter() - started, 1),
        "comparisons": compare(rows),
        "results": rows,
    }
    args.out.write_text(json.dumps(result, indent=1, default=str))
    for item in result["comparisons"]:
        print(json.dumps(item))
    print(f"wrote {args.out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
