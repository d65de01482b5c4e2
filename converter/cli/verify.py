"""`trtforge verify`: compare stages on real inputs, per pass, per layer (converter.api.verify)."""

from __future__ import annotations

import math

import click

from converter import api
from converter.cli.options import (
    PATH,
    backend_option,
    choice_option,
    emit,
    fail_on_accuracy,
    load_inputs_option,
    names,
    out_option,
    output_options,
    runtime_cache_option,
    shapes_option,
    summary,
    task_option,
    trust_option,
)
from converter.core.errors import UsageError
from converter.core.profiles import parse_profiles
from converter.pipelines.recipe import PRECISIONS
from converter.verification.tolerances import Tolerances


def parse_tolerances(precision: str, atol: tuple[str, ...], rtol: tuple[str, ...], min_cosine: tuple[str, ...]):
    """`--atol 1e-3` sets the default; `--atol logits:1e-2` one output's (Polygraphy style)."""
    defaults: dict[str, float] = {}
    per_output: dict[str, dict[str, float]] = {}
    for key, items in (("atol", atol), ("rtol", rtol), ("min_cosine", min_cosine)):
        for item in items:
            name, _, value = item.rpartition(":")
            flag = f"--{key.replace('_', '-')}"
            try:
                number = float(value)
            except ValueError as exc:
                raise UsageError(f"{flag} '{item}': expected a number or NAME:NUMBER") from exc
            if not math.isfinite(number) or number < 0 or (key == "min_cosine" and number > 1):
                allowed = "between 0 and 1" if key == "min_cosine" else "a finite number >= 0"
                raise UsageError(f"{flag} '{item}': must be {allowed}")
            if name:
                per_output.setdefault(name, {})[key] = number
            else:
                defaults[key] = number
    tol = Tolerances.for_precision(precision, defaults)
    tol.per_output = per_output
    return tol


def _tolerance_option(name: str, what: str):
    return click.option(name, multiple=True, metavar="[OUT:]X", help=f"{what}, default or per output.")


@click.command()
@click.argument("reference")
@click.argument("candidates", nargs=-1)
@load_inputs_option(".npz of inputs (one array per input).")
@click.option("--save-inputs", type=PATH, help="Write the inputs used to this .npz.")
@choice_option(
    "--precision",
    PRECISIONS,
    None,
    "Selects the default tolerances (default: fp32, and for --passes the precision each pass leaves).",
)
@_tolerance_option("--atol", "Absolute tolerance")
@_tolerance_option("--rtol", "Relative tolerance")
@_tolerance_option("--min-cosine", "Minimum cosine")
@click.option("--passes", help="Also compare the reference ONNX after each of these passes (e.g. fold,precision).")
@click.option("--localize", is_flag=True, help="Compare ONNX candidates layer by layer: where did error enter?")
@click.option("--html", type=PATH, help="Write a self-contained HTML report here.")
@click.option(
    "--generate",
    type=click.IntRange(0, 4096),
    default=0,
    metavar="N",
    help="A decoder with a KV cache: also decode N greedy tokens per prompt with the reference and every "
    "candidate (cache fed back) and compare token by token.",
)
@click.option("--generate-prompts", type=click.IntRange(1, 256), default=8, show_default=True, metavar="K")
@click.option(
    "--min-token-agreement",
    type=click.FloatRange(0, 1),
    default=1.0,
    show_default=True,
    help="With --generate: the share of prompts whose every token must match the reference's.",
)
@task_option("text-generation-with-past: a torch reference with its KV cache (needed for --generate).")
@backend_option()
@runtime_cache_option()
@out_option("Write the JSON report here.", required=False)
@shapes_option
@trust_option
@output_options
def verify(reference, candidates, precision, atol, rtol, min_cosine, passes, out, shapes, as_json, quiet, **options):
    """Compare CANDIDATES (.onnx / .engine) against REFERENCE (torch model or .onnx) on real inputs.

    REFERENCE is a demo name (minilm, efficientnet-lite0, decoder-lm), a
    'package.module:factory' spec or an .onnx file. Exit code 0 when every comparison
    passes, 3 when one fails or nothing could be run.

    \b
    Examples:
      trtforge verify minilm trtforge_out/model.onnx trtforge_out/model.opt.onnx
      trtforge verify ref.onnx cand.onnx --atol 1e-3 --min-cosine logits:0.999 --json
      trtforge verify ref.onnx --passes fold,precision          # accuracy after each pass
      trtforge verify ref.onnx cand.onnx --localize --html r.html  # where did error enter?
      trtforge verify decoder-lm out/lm/model.opt.onnx --task text-generation-with-past --generate 32
    """
    result = api.verify(
        reference,
        list(candidates),
        tolerances=parse_tolerances(precision or "fp32", atol, rtol, min_cosine)
        if precision or atol or rtol or min_cosine
        else None,
        shapes={name: prof.opt for name, prof in parse_profiles(shapes).items()},
        passes=names(passes),
        report_path=out,
        **options,
    )
    emit(result.report, as_json, quiet, summary)
    fail_on_accuracy(result.report)
