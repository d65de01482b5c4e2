"""`trtforge convert`: MODEL -> verified engine (converter.api.convert)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from converter import api
from converter.cli.options import (
    PATH,
    backend_option,
    cache_options,
    choice_option,
    console,
    emit,
    fail_on_accuracy,
    load_inputs_option,
    names,
    out_option,
    output_options,
    precision_flags,
    profile_option,
    progress,
    runtime_cache_option,
    shapes_option,
    summary,
    target_gpu_option,
    task_option,
    trust_option,
)
from converter.core.profiles import parse_profile_groups, parse_profiles
from converter.pipelines.budget.spec import OBJECTIVES
from converter.pipelines.recipe import PRECISIONS


@click.command()
@click.argument("model", required=False)
@out_option(
    "Output folder (model.onnx, model.opt.onnx, model.engine + .json, report.json).",
    required=False,
    default=Path("trtforge_out"),
    show_default=True,
)
@click.option("--recipe", type=PATH, help="Recipe YAML/JSON (or a previous report.json).")
@choice_option("--precision", PRECISIONS, None, "Compute precision (default: recipe's, else fp32).")
@backend_option(None, "Engine backend (default: auto).")
@target_gpu_option
@load_inputs_option(".npz of inputs to verify with.")
@runtime_cache_option()
@shapes_option
@profile_option
@task_option("text-generation-with-past: a torch decoder exported with its KV cache (default for a graph with one).")
@click.option(
    "--budget",
    help="Search passes and precision for the smallest engine within this accuracy budget: "
    "cosine>=0.99, top1>=0.98 or ppl<=+5% (vs the source, on validation samples the search did not calibrate on).",
)
@choice_option("--objective", OBJECTIVES, "weight-bytes", "What --budget minimises (latency: a roofline estimate).")
@click.option(
    "--calib",
    type=PATH,
    help="Calibration data for the passes that need it and for --budget (a folder of .npz/.npy, images or .txt, "
    "or one .npz); recorded in the recipe. Default: the model's own sample data.",
)
@click.option("--validation", type=PATH, help="--budget: validation data, disjoint from the calibration data.")
@click.option(
    "--search-formats",
    help="Quantization formats --budget tries, comma-separated (int8, fp8, int4-wo, int8-wo); default per objective.",
)
@click.option(
    "--search-seconds",
    type=float,
    default=1800.0,
    show_default=True,
    help="Time budget of the --budget search; the best configuration found so far is used.",
)
@cache_options
@trust_option
@output_options
@precision_flags
def convert(
    model,
    out,
    shapes,
    profiles,
    as_json,
    quiet,
    budget,
    objective,
    validation,
    search_formats,
    search_seconds,
    **options,
):
    """Convert MODEL (default: minilm) to a verified TensorRT engine.

    MODEL is a file path (.onnx), a demo name (minilm, efficientnet-lite0) or a
    'package.module:factory' spec. A decoder with a KV cache (exported with
    --task text-generation-with-past) gets a prefill and a decode profile and a greedy
    generation check of every stage.

    \b
    Examples:
      trtforge convert
      trtforge convert efficientnet-lite0 --precision fp16 --target-gpu sm89 -o out/effnet
      trtforge convert model.onnx --shapes image:1x3x224x224/8x3x224x224/32x3x224x224 -o out/model
      trtforge convert decoder-lm --task text-generation-with-past -o out/lm   # prefill + decode engine
      trtforge convert minilm --recipe trtforge_out/report.json -o out/again     # reproduce a run
      trtforge convert decoder-lm --budget 'ppl<=+5%' -o out/lm-small   # smallest graph within +5 % perplexity
    """
    if validation and not budget:
        raise click.UsageError("--validation is the --budget search's data: give --budget too")
    silent = quiet or as_json
    with progress("converting...", silent) as log:
        result = api.convert(
            model,
            out,
            shapes=parse_profiles(shapes),
            profiles=parse_profile_groups(profiles),
            log=log,
            budget=api.BudgetOptions(
                budget, objective, search_seconds, names(search_formats) or None, validation=validation
            )
            if budget
            else None,
            **options,
        )
    emit(result.report, as_json, quiet, summary)
    if not silent:
        console.print(f"report: {escape(str(result.paths['report']))}", highlight=False)
    fail_on_accuracy(result.report)
