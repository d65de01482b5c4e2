"""The `trtforge` command line: the group (errors -> exit codes, --debug, --version) and its commands.

Each command lives in its own module (converter/cli/<command>.py): it parses flags
into the keyword arguments of one converter.api function and prints the report
that function returns. Flags follow trtexec/Polygraphy naming (--shapes,
--atol/--rtol, --fp16-style precision, --load-inputs/--save-inputs). Errors print
one line and exit with the codes in converter.core.errors.ExitCode; --debug shows
the traceback. `python -m converter.cli` is the same command.
"""

from __future__ import annotations

import importlib
import signal
import threading
from typing import Any

import click
from rich.markup import escape

from converter.core.errors import AccuracyError, ExitCode, Interrupted, TrtforgeError
from converter.core.version import __version__

# name -> (module:attribute, the one-line summary `trtforge --help` lists). Commands are
# imported only when run or asked for their own --help: importing them all (onnx, torch,
# onnxruntime, TensorRT) took ~2 s before the top-level --help could print.
# tests/converter/test_cli.py checks each summary against the command's own docstring.
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("converter.cli.convert:convert", "Convert MODEL (default: minilm) to a verified TensorRT engine."),
    "export": ("converter.cli.export:export", "Export a torch MODEL (demo name or module:factory) to ONNX."),
    "optimize": ("converter.cli.optimize:optimize", "Rewrite ONNX_FILE through graph passes."),
    "build": ("converter.cli.build:build", "Build a TensorRT engine from ONNX_FILE (writes OUT and OUT.json)."),
    "build-matrix": (
        "converter.cli.build_matrix:build_matrix",
        "Convert every model x target x precision x recipe of MANIFEST, in parallel.",
    ),
    "verify": (
        "converter.cli.verify:verify",
        "Compare CANDIDATES (.onnx / .engine) against REFERENCE (torch model or .onnx) on real inputs.",
    ),
    "inspect": ("converter.cli.inspect:inspect", "Summarise an ONNX file or a TensorRT engine."),
    "passes": ("converter.cli.passes:list_passes", "List the registered graph passes and pass groups."),
    "quantize": (
        "converter.cli.quantize:quantize",
        "Quantize MODEL (.onnx, or a torch model: a demo or module:factory, exported and folded first) "
        "with calibrated Q/DQ.",
    ),
    "refit": (
        "converter.cli.refit:refit",
        "Put ONNX_FILE's weights into ENGINE (built with --strip-weights or --refit); needs a GPU.",
    ),
    "doctor": (
        "converter.cli.doctor:doctor",
        "Report backends, GPUs, CUDA, onnxruntime and the targets this machine can build engines for.",
    ),
    "drop-blocks": (
        "converter.cli.drop_blocks:drop_blocks",
        "Remove redundant transformer blocks / sub-layers from MODEL (.onnx, demo or module:factory).",
    ),
}


class TrtforgeGroup(click.Group):
    """Maps TrtforgeError to one line + exit code; tracebacks only with --debug. Commands load lazily."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, _, attr = COMMANDS[cmd_name][0].partition(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from COMMANDS' summaries, without importing a single command."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])

    def invoke(self, ctx: click.Context) -> Any:
        previous = _raise_on_sigterm()
        try:
            return super().invoke(ctx)
        except TrtforgeError as exc:
            if ctx.meta.get("trtforge.debug"):
                raise
            from converter.cli.options import err_console

            if not isinstance(exc, AccuracyError):
                err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            else:
                err_console.print(f"[red]{escape(str(exc))}[/red]", highlight=False)
            ctx.exit(exc.exit_code)
        except (KeyboardInterrupt, Interrupted) as exc:
            from converter.cli.options import err_console

            code = ExitCode.INTERRUPTED if isinstance(exc, KeyboardInterrupt) else ExitCode.TERMINATED
            signal_name = "Ctrl-C" if code == ExitCode.INTERRUPTED else "SIGTERM"
            command = ctx.invoked_subcommand or "trtforge"
            stage = getattr(exc, "stage", None)  # set by pipelines that run in stages (convert)
            during = f" in its {stage} stage" if stage else ""
            err_console.print(
                f"[red]interrupted:[/red] {command} stopped by {signal_name}{during}; its partial outputs were removed",
                highlight=False,
            )
            ctx.exit(code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # a bug: one line, or the traceback with --debug
            if ctx.meta.get("trtforge.debug"):
                raise
            from converter.cli.options import err_console

            err_console.print(
                f"[red]internal error:[/red] {type(exc).__name__}: {escape(str(exc))} (rerun with --debug)",
                highlight=False,
                soft_wrap=True,
            )
            ctx.exit(ExitCode.INTERNAL)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


@click.group(cls=TrtforgeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option(
    "--limit",
    "limits",
    multiple=True,
    metavar="NAME=VALUE",
    is_eager=True,
    callback=lambda ctx, _param, values: _list_limits(ctx) if "help" in values else values,
    help="Raise a resource limit for this run, e.g. --limit tensor-bytes=128G (--limit help lists them).",
)
@click.version_option(__version__, prog_name="trtforge")
@click.pass_context
def main(ctx: click.Context, debug: bool, limits: tuple[str, ...]) -> None:
    """trtforge: PyTorch/ONNX -> optimized ONNX -> TensorRT engine, verified at every stage.

    \b
    Examples:
      trtforge convert                      # the embedded default: all-MiniLM-L6-v2
      trtforge convert efficientnet-lite0 --precision fp16 -o out/effnet
      trtforge export minilm -o minilm.onnx
      trtforge optimize minilm.onnx -o minilm.opt.onnx --passes cleanup,fold-constants
      trtforge build minilm.opt.onnx -o minilm.engine     # the profiles export recorded
      trtforge verify minilm minilm.onnx minilm.engine
      trtforge inspect minilm.engine

    \b
    Exit codes: 0 ok, 1 internal error, 2 usage, 3 accuracy check failed,
    4 invalid input, 5 unsupported (op/option), 6 backend unavailable.
    """
    ctx.meta["trtforge.debug"] = debug
    if limits:
        from converter.core.limits import set_limits

        try:
            set_limits(limits)
        except TrtforgeError as exc:
            raise click.UsageError(str(exc)) from exc


def _list_limits(ctx: click.Context) -> None:
    """`trtforge --limit help`: each limit, its default and its environment variable."""
    from converter.core.limits import describe

    click.echo(describe())
    ctx.exit(0)


def _terminated(signum: int, frame: Any) -> None:
    raise Interrupted()


def _raise_on_sigterm() -> Any:
    """SIGTERM becomes an exception while a command runs, so staging folders and temp files are
    removed on the way out (the default action kills the process where it stands). Returns the
    handler it replaced (None off the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _terminated)
