"""`trtforge verify`: compare stages on real inputs, per pass, per layer."""

from __future__ import annotations

from pathlib import Path

import click

from converter import api
from converter.backends import BACKEND_CHOICES
from converter.cli.options import emit, fail_on_accuracy, output_options, shapes_option, summary, trust_option
from converter.core.errors import InvalidInputError
from converter.core.profiles import parse_profiles
from converter.pipelines.html_report import write_html
from converter.pipelines.recipe import PRECISIONS, Tolerances
from converter.pipelines.report import new_report, write_report


def parse_tolerances(precision: str, atol: tuple[str, ...], rtol: tuple[str, ...], min_cosine: tuple[str, ...]):
    """`--atol 1e-3` sets the default; `--atol logits:1e-2` one output's (Polygraphy style)."""
    defaults: dict[str, float] = {}
    per_output: dict[str, dict[str, float]] = {}
    for key, items in (("atol", atol), ("rtol", rtol), ("min_cosine", min_cosine)):
        for item in items:
            name, _, value = item.rpartition(":")
            try:
                number = float(value)
            except ValueError as exc:
                raise InvalidInputError(
                    f"--{key.replace('_', '-')} '{item}': expected a number or NAME:NUMBER"
                ) from exc
            if name:
                per_output.setdefault(name, {})[key] = number
            else:
                defaults[key] = number
    tol = Tolerances.for_precision(precision, defaults)
    tol.per_output = per_output
    return tol


@click.command()
@click.argument("reference")
@click.argument("candidates", nargs=-1)
@click.option("--load-inputs", type=click.Path(path_type=Path), help=".npz of inputs (one array per input).")
@click.option("--save-inputs", type=click.Path(path_type=Path), help="Write the inputs used to this .npz.")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="Selects the default tolerances.",
)
@click.option("--atol", multiple=True, metavar="[OUT:]X", help="Absolute tolerance, default or per output.")
@click.option("--rtol", multiple=True, metavar="[OUT:]X", help="Relative tolerance, default or per output.")
@click.option("--min-cosine", multiple=True, metavar="[OUT:]X", help="Minimum cosine, default or per output.")
@click.option("--passes", help="Also compare the reference ONNX after each of these passes (e.g. fold,precision).")
@click.option("--localize", is_flag=True, help="Compare ONNX candidates layer by layer: where did error enter?")
@click.option("--html", type=click.Path(path_type=Path), help="Write a self-contained HTML report here.")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True)
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Write the JSON report here.")
@shapes_option
@trust_option
@output_options
def verify(
    reference,
    candidates,
    load_inputs,
    save_inputs,
    precision,
    atol,
    rtol,
    min_cosine,
    passes,
    localize,
    html,
    backend,
    out,
    shapes,
    trust_model_code,
    as_json,
    quiet,
):
    """Compare CANDIDATES (.onnx / .engine) against REFERENCE (torch model or .onnx) on real inputs.

    REFERENCE is a demo name (minilm, efficientnet-lite0, decoder-lm), a
    'package.module:factory' spec or an .onnx file. Exit code 0 when every comparison
    passes, 3 when one fails or nothing could be run.

    \b
    Examples:
      trtforge verify minilm out/model.onnx out/model.opt.onnx
      trtforge verify ref.onnx cand.onnx --atol 1e-3 --min-cosine logits:0.999 --json
      trtforge verify ref.onnx --passes fold,precision          # accuracy after each pass
      trtforge verify ref.onnx cand.onnx --localize --html r.html  # where did error enter?
    """
    tol = parse_tolerances(precision, atol, rtol, min_cosine)
    static = {name: prof.opt for name, prof in parse_profiles(shapes).items()}
    pass_names = [p.strip() for p in (passes or "").split(",") if p.strip()]
    result = api.verify(
        reference,
        list(candidates),
        load_inputs,
        tol,
        backend,
        static,
        trust_model_code=trust_model_code,
        localize=localize,
        passes=pass_names,
    )
    report = new_report("verify")
    report["input"] = {
        "reference": reference,
        "candidates": list(candidates),
        "samples": {"source": result.inputs_source, "count": result.samples},
    }
    report["passes"] = [r.to_dict() for r in result.pass_records]
    report["verification"] = [c.to_dict() for c in result.comparisons]
    if result.localizations:
        report["localizations"] = result.localizations
        first = next(iter(result.localizations.values()))
        report["divergent_layers"] = first["divergent_layers"]  # the first candidate's, at the top level
        report["localization"] = first
    report["verified"] = "yes" if any(not c.skipped for c in result.comparisons) else "not verified"
    report["passed"] = result.passed
    if out:
        write_report(report, out)
    if html:
        write_html(report, html)
    if save_inputs:
        api.save_feeds(result.sample, save_inputs)
    emit(report, as_json, quiet, summary)
    fail_on_accuracy(report)
