"""What every command module shares: the option groups (each flag defined once), consoles, printing.

A command module declares its flags from these, parses them into the keyword
arguments of one converter.api function, calls it and prints the report it returns.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from converter.backends import BACKEND_CHOICES
from converter.cli.progress import ProgressDisplay
from converter.core.errors import AccuracyError, UsageError
from converter.pipelines.report import print_summary, to_json

# Captured output (CI logs, pipes) gets a wide console so tables do not truncate.
console = Console() if sys.stdout.isatty() else Console(width=130)
err_console = Console(stderr=True)

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class FiniteFloat(click.FloatRange):
    """A float in a range that also refuses NaN and infinities (click's FloatRange lets NaN through:
    every comparison with it is false; `drop-blocks --min-cosine nan` removed every block)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


FRACTION = FiniteFloat(0.0, 1.0, min_open=True, max_open=True)  # a share of the model, strictly between 0 and 1
NON_NEGATIVE = FiniteFloat(min=0.0)
COSINE = FiniteFloat(-1.0, 1.0)
POSITIVE_INT = click.IntRange(min=1)
PATH = click.Path(path_type=Path)


def stack(*decorators: Decorator) -> Decorator:
    """Several option decorators as one, in the order written (the order --help lists them)."""

    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def out_option(help: str, required: bool = True, aliases: tuple[str, ...] = (), **attrs: Any) -> Decorator:
    """-o/--out: the file (or folder) the command writes (`aliases`: other tools' names for it)."""
    return click.option("-o", "--out", *aliases, "out", type=PATH, required=required, help=help, **attrs)


onnx_out_option = out_option("Output .onnx file.")


def choice_option(
    name: str, choices, default: str | None, help: str | None, dest: str | None = None, **attrs: Any
) -> Decorator:
    """A --flag taking one of `choices` (the default shown in --help when there is one)."""
    attrs.setdefault("show_default", default is not None)
    decls = (name, dest) if dest else (name,)
    return click.option(*decls, type=click.Choice(choices), default=default, help=help, **attrs)


def task_option(help_text: str) -> Decorator:
    """--task: a torch model's form (kv_cache.TASKS): as it is, or a decoder with its KV cache."""
    from converter.core.kv_cache import TASKS

    return choice_option("--task", TASKS, "default", help_text)


def backend_option(default: str | None = "auto", help: str | None = None) -> Decorator:
    return choice_option("--backend", BACKEND_CHOICES, default, help)


def runtime_cache_option() -> Decorator:
    """--runtime-cache: TensorRT-RTX's JIT kernel cache in a file, loaded before engines run, saved after."""
    return click.option(
        "--runtime-cache",
        type=PATH,
        help="TensorRT-RTX: keep the kernels engines JIT-compile on the GPU in this file between runs "
        "(loaded when compatible, written after the run; a file the runtime rejects is left as it is).",
    )


def load_inputs_option(help: str, dest: str = "inputs") -> Decorator:
    """--load-inputs: an .npz of inputs (one array per input name)."""
    return click.option("--load-inputs", dest, type=PATH, help=help)


def batch_size_option(help: str | None = None) -> Decorator:
    return click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help=help)


def output_options(func=None, *, what: str = "result"):
    """--json and --quiet, shared by every command (`what` the JSON is: the result, the report)."""

    def apply(f):
        f = click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")(f)
        return click.option("--json", "as_json", is_flag=True, help=f"Print the {what} as JSON on stdout.")(f)

    return apply(func) if func is not None else apply


trtexec_shapes_options = stack(
    *(
        click.option(
            f"--{which}-shapes", f"{which}_shapes", metavar="NAME:SHAPE,...", help=f"trtexec's --{which}Shapes."
        )
        for which in ("min", "opt", "max")
    )
)

shapes_option = click.option(
    "--shapes",
    multiple=True,
    metavar="NAME:MIN/OPT/MAX",
    help="Input shapes, e.g. input_ids:1x8/4x128/16x256 (profile) or image:1x3x224x224 (static). Repeatable.",
)


def precision_flags(function):
    """trtexec's --fp16 / --bf16 beside --precision: the command receives `precision` only."""

    @functools.wraps(function)
    def merged(*args, fp16: bool, bf16: bool, **kwargs):
        flags = [name for name, on in (("fp16", fp16), ("bf16", bf16)) if on]
        given = kwargs.get("precision")
        if len(flags) > 1 or (flags and given not in (None, flags[0], "fp32")):
            raise UsageError(f"--{'/--'.join(flags)} and --precision {given}: choose one precision")
        if flags:
            kwargs["precision"] = flags[0]
        return function(*args, **kwargs)

    merged = click.option("--bf16", is_flag=True, help="Same as --precision bf16 (trtexec's flag).")(merged)
    return click.option("--fp16", is_flag=True, help="Same as --precision fp16 (trtexec's flag).")(merged)


def cache_options(function):
    """--cache-dir / --no-cache: the artifact cache (converter/core/artifact_cache.py)."""
    function = click.option(
        "--no-cache",
        "use_cache",
        flag_value=False,
        default=None,
        help="Neither read nor write the artifact cache (default: on, unless TRTFORGE_CACHE=0).",
    )(function)
    return click.option(
        "--cache-dir",
        type=PATH,
        help="Artifact cache folder (default: $TRTFORGE_CACHE_DIR or ~/.cache/trtforge/artifacts).",
    )(function)


profile_option = click.option(
    "--profile",
    "profiles",
    multiple=True,
    metavar="NAME:MIN/OPT/MAX[,...]",
    help="One optimization profile of the engine (every dynamic input, comma-separated); repeat for "
    "several profiles in one engine. Default: one from --shapes, or prefill + decode for a KV-cache model.",
)

target_gpu_option = click.option(
    "--target-gpu",
    "--target",
    "target_gpus",
    multiple=True,
    metavar="SM|NAME",
    help="Compute capability to build for, e.g. sm86, or a target: turing, ampere, ada, blackwell, spark "
    "(hopper, orin, thor need full TensorRT; `trtforge doctor` lists them). Repeatable; tensorrt-rtx; "
    "default sm86, sm89, sm120.",
)

trust_option = click.option(
    "--trust-model-code",
    is_flag=True,
    help="Let an ONNX file's metadata name a module:factory to import for sample data/profiles.",
)


def progress(message: str | None, silent: bool) -> ProgressDisplay:
    """Where a use case's progress goes (use as `with progress(...) as log:`): bars and a spinner on a
    terminal, plain lines in a CI log, nothing with --quiet/--json (converter/cli/progress.py)."""
    return ProgressDisplay(message, silent, err_console)


def emit(result: dict[str, Any], as_json: bool, quiet: bool, summary=None) -> None:
    """Print a command's result as JSON, as a rich summary, or not at all."""
    if as_json:
        click.echo(to_json(result))
    elif not quiet:
        (summary or (lambda r: console.print_json(to_json(r))))(result)


def fail_on_accuracy(report: dict[str, Any]) -> None:
    """Exit code 3 for a report that is not verified or did not pass."""
    if report.get("verified") == "not verified":
        raise AccuracyError("not verified: nothing could be checked on this machine (see the skipped reasons)")
    if not report.get("passed"):
        raise AccuracyError("accuracy check failed: see the verification table/report")


def summary(report: dict[str, Any]) -> None:
    print_summary(report, console)


def names(csv: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c'] (comma-separated flag values)."""
    return [p.strip() for p in (csv or "").split(",") if p.strip()]
