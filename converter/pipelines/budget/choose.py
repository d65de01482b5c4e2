"""`convert --budget`: search a recipe for the smallest graph within an accuracy budget, then convert with it.

The search runs on the exported source graph after the recipe's own (exact) passes,
with convert's calibration data and a disjoint validation set (data.py); it returns an
ordinary Recipe (the recipe's passes plus the chosen drop-blocks / smoothquant /
quantize passes with every choice explicit, and the chosen precision) and the search's
report section. `convert` then runs that recipe like any other, so its report.json
holds a recipe that `convert MODEL --recipe report.json` reproduces byte for byte
without searching.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from calibration.data import from_feeds
from converter.core.artifact_cache import data_digest
from converter.core.errors import InvalidInputError
from converter.core.model_io import opset_of
from converter.core.model_spec import ModelSpec
from converter.core.targets import expand_targets
from converter.pipelines.budget.candidates import FORMATS, Measure
from converter.pipelines.budget.costs import DEFAULT_TARGET, PEAKS, graph_cost, node_flops
from converter.pipelines.budget.data import Validator, search_data
from converter.pipelines.budget.search import JointSearch, drop_ladder
from converter.pipelines.budget.spec import Budget, check_objective
from converter.pipelines.generation_check import is_cache_model
from converter.pipelines.recipe import Recipe
from passes.base import PassContext
from passes.blocks.scores import language_model_io
from passes.manager import run_passes
from passes.registry import PASSES, expand_groups

DEFAULT_FORMATS = {
    "weight-bytes": ("int4-wo", "int8", "int8-wo"),
    "engine-size": ("int4-wo", "int8", "int8-wo"),
    "flops": ("int8",),  # weight-only formats compute in the activations' type: no fewer weighted FLOPs
    "latency": ("int8", "int4-wo", "int8-wo"),
}
MAX_SEARCH_SECONDS = 7 * 24 * 3600.0
Log = Callable[[str], None]


@dataclass
class BudgetOptions:
    """What `convert --budget` searches for (the CLI's flags; also converter.api.convert's keywords)."""

    budget: str | Budget
    objective: str = "weight-bytes"
    search_seconds: float = 1800.0
    formats: tuple[str, ...] | None = None  # quantize modes to try; default per objective (DEFAULT_FORMATS)
    val_samples: int = 128
    validation: str | Path | None = None  # validation data files; default: the model's own stream

    def parsed(self) -> Budget:
        return self.budget if isinstance(self.budget, Budget) else Budget.parse(self.budget)

    def check(self) -> None:
        self.parsed()
        check_objective(self.objective)
        if not (math.isfinite(self.search_seconds) and 0 < self.search_seconds <= MAX_SEARCH_SECONDS):
            raise InvalidInputError(f"--search-seconds {self.search_seconds}: give a number of seconds > 0")
        bad = [f for f in self.formats or () if f not in FORMATS]
        if bad:
            raise InvalidInputError(f"budget formats {bad}: choose from {', '.join(FORMATS)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.parsed().to_dict(),
            "objective": self.objective,
            "search_seconds": self.search_seconds,
            "formats": list(self.formats or DEFAULT_FORMATS[self.objective]),
            "validation_samples": self.val_samples,
            "validation": str(self.validation) if self.validation else None,
        }


def _refuse_lossy(rec: Recipe) -> None:
    """The search chooses the lossy passes and the precision itself: a recipe naming one is refused."""
    names = [name for name, _ in expand_groups([(p.name, p.options) for p in rec.passes])]
    lossy = sorted({n for n in names if n in PASSES and not PASSES[n].exact})
    if lossy:
        raise InvalidInputError(
            f"--budget chooses drop-blocks, smoothquant/quantize and precision itself; the recipe already has {lossy}"
        )


def _target(rec: Recipe) -> str:
    for compute in expand_targets(list(rec.target_gpus)):
        if compute in PEAKS:
            return compute
    return DEFAULT_TARGET


def search_recipe(
    source: onnx.ModelProto,
    spec: ModelSpec | None,
    rec: Recipe,
    options: BudgetOptions,
    fixed_precision: str | None,
    log: Log,
) -> tuple[Recipe, dict[str, Any]]:
    """(the recipe to convert with, the report's `search` section); see the module docstring."""
    options.check()
    budget = options.parsed()
    lm = language_model_io(source)
    if budget.needs_language_model and lm is None:
        raise InvalidInputError(
            f"--budget {budget.text}: perplexity needs a language model (trtforge.task=language-model)"
        )
    _refuse_lossy(rec)
    data = search_data(
        source,
        spec,
        rec.verify_batches,
        rec.verify_batch_size,
        options.val_samples,
        rec.calibration,
        options.validation,
    )
    calib = from_feeds(data.calib, data.source)
    log(f"budget search: {budget.text}, objective {options.objective}; {data.describe()}")
    base = run_passes(source, list(rec.passes), PassContext(opset=opset_of(source), calibration=calib))[0]
    flops = node_flops(base, data.val[0])
    validator = Validator(source, data.val, lm, budget.task)
    target = _target(rec)
    measure = Measure(base, calib, validator, flops, budget, options.objective, target)
    log("ordering blocks and sub-layers for dropping (calibration data, gated graph)")
    ladder, blocks = drop_ladder(base, (data.calib, data.val), budget, options.objective, flops)
    formats = list(options.formats or DEFAULT_FORMATS[options.objective])
    result = JointSearch(measure, ladder, formats, fixed_precision, options.search_seconds, log).run()
    section = {
        **options.to_dict(),
        "data": data.describe(),
        "blocks": blocks,
        "target_for_estimates": {"compute": target, "gpu": PEAKS[target].gpu}
        if options.objective == "latency"
        else None,
        "baseline": {"metrics": validator.base, **graph_cost(base, flops, "fp32", target).to_dict()},
        **result.to_dict(),
    }
    if result.best is None:
        raise InvalidInputError(f"--budget {budget.text}: no configuration met it ({result.stopped})")
    chosen = rec.copy()
    chosen.passes = [*rec.passes, *result.best.config.passes()]
    chosen.precision = result.best.config.precision
    chosen.budget = None if budget.task else budget.text
    return chosen, section


@dataclass
class BudgetSearch:
    """One convert run's `--budget`: its options and whether the caller fixed the precision."""

    options: BudgetOptions
    fixed_precision: str | None

    @property
    def text(self) -> str:
        return self.options.parsed().text

    @property
    def uncacheable(self) -> bool:
        """A caller's task metric is code the artifact cache cannot key: such runs are not cached."""
        return self.options.parsed().task is not None

    def key(self) -> dict[str, Any]:
        """What the artifact cache keys a search run by (the validation files by their contents)."""
        validation = self.options.validation and data_digest(self.options.validation)
        return {**self.options.to_dict(), "fixed_precision": self.fixed_precision, "validation_data": validation}

    def run(self, source: onnx.ModelProto, spec: ModelSpec | None, rec: Recipe, log: Log):
        chosen, section = search_recipe(source, spec, rec, self.options, self.fixed_precision, log)
        best = section["chosen"]
        section["summary"] = (
            f"{len(section['evaluated'])} configurations in {section['seconds']:.0f} s; chose {best['label']}: "
            f"{section['metric']} {best['value']:.4f}, {self.options.objective} {best['objective']:.4g}"
        )
        return chosen, section


def budget_for(budget: BudgetOptions | str | Budget | None, ref, fixed_precision: str | None) -> BudgetSearch | None:
    """The run's budget search, checked before any work (None without a budget)."""
    if budget is None:
        return None
    options = budget if isinstance(budget, BudgetOptions) else BudgetOptions(budget)
    options.check()
    if fixed_precision == "bf16":
        raise InvalidInputError(
            "--budget measures every configuration in onnxruntime on the CPU, which cannot run bf16 graphs: "
            "leave --precision out (the search picks fp16 or fp32) or give fp16"
        )
    if is_cache_model(ref):
        raise InvalidInputError(
            "--budget on a decoder with a KV cache is not supported yet: search on the model without "
            "--task text-generation-with-past, then convert the cache variant with the chosen recipe's passes"
        )
    return BudgetSearch(options, fixed_precision)
