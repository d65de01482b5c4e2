"""Options and output helpers shared by every CLI command module."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console

from converter.core.errors import AccuracyError
from converter.pipelines.report import print_summary, to_json

# Captured output (CI logs, pipes) gets a wide console so tables do not truncate.
console = Console() if sys.stdout.isatty() else Console(width=130)
err_console = Console(stderr=True)


def output_options(func):
    """--json and --quiet, shared by every command."""
    func = click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")(func)
    func = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")(func)
    return func


def shapes_option(func):
    return click.option(
        "--shapes",
        multiple=True,
        metavar="NAME:MIN/OPT/MAX",
        help="Input shapes, e.g. input_ids:1x8/4x128/16x256 (profile) or image:1x3x224x224 (static). Repeatable.",
    )(func)


def target_gpu_option(func):
    return click.option(
        "--target-gpu",
        "target_gpus",
        multiple=True,
        metavar="SM",
        help="Compute capability to build for, e.g. sm86 (repeatable; tensorrt-rtx; default sm86, sm89, sm120).",
    )(func)


def emit(result: dict[str, Any], as_json: bool, quiet: bool, summary=None) -> None:
    """Print a command's result as JSON, as a rich summary, or not at all."""
    if as_json:
        click.echo(to_json(result))
    elif not quiet:
        (summary or (lambda r: console.print_json(to_json(r))))(result)


def fail_on_accuracy(report: dict[str, Any]) -> None:
    if report.get("verified") == "not verified":
        raise AccuracyError("not verified: nothing could be checked on this machine (see the skipped reasons)")
    if not report.get("passed"):
        raise AccuracyError("accuracy check failed: see the verification table/report")


def summary(report: dict[str, Any]) -> None:
    print_summary(report, console)


def trust_option(func):
    return click.option(
        "--trust-model-code",
        is_flag=True,
        help="Let an ONNX file's metadata name a module:factory to import for sample data/profiles.",
    )(func)
