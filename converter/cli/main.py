"""The `trtforge` command line: the group (errors -> exit codes, --debug, --version) and its commands.

Each command lives in its own module (converter/cli/<command>.py): it parses flags
into the keyword arguments of one converter.api function and prints the report
that function returns. Flags follow trtexec/Polygraphy naming (--shapes,
--atol/--rtol, --fp16-style precision, --load-inputs/--save-inputs). Errors print
one line and exit with the codes in converter.core.errors.ExitCode; --debug shows
the traceback. `python -m converter.cli` is the same command.
"""

from __future__ import annotations

from typing import Any

import click

from converter.cli.build import build
from converter.cli.convert import convert
from converter.cli.drop_blocks import drop_blocks
from converter.cli.export import export
from converter.cli.inspect import inspect
from converter.cli.optimize import optimize
from converter.cli.options import err_console
from converter.cli.passes import list_passes
from converter.cli.quantize import quantize
from converter.cli.verify import verify
from converter.core.errors import AccuracyError, ExitCode, TrtforgeError
from converter.core.version import __version__


class TrtforgeGroup(click.Group):
    """Maps TrtforgeError to one line + exit code; tracebacks only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TrtforgeError as exc:
            if ctx.meta.get("trtforge.debug"):
                raise
            if not isinstance(exc, AccuracyError):
                err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            else:
                err_console.print(f"[red]{exc}[/red]", highlight=False)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # a bug: one line, or the traceback with --debug
            if ctx.meta.get("trtforge.debug"):
                raise
            err_console.print(
                f"[red]internal error:[/red] {type(exc).__name__}: {exc} (rerun with --debug)",
                highlight=False,
                soft_wrap=True,
            )
            ctx.exit(ExitCode.INTERNAL)


@click.group(cls=TrtforgeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(__version__, prog_name="trtforge")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """trtforge: PyTorch/ONNX -> optimized ONNX -> TensorRT engine, verified at every stage.

    \b
    Examples:
      trtforge convert                      # the embedded default: all-MiniLM-L6-v2
      trtforge convert efficientnet-lite0 --precision fp16 -o out/effnet
      trtforge export minilm -o minilm.onnx
      trtforge optimize minilm.onnx -o minilm.opt.onnx --passes cleanup,fold-constants
      trtforge build minilm.opt.onnx -o minilm.engine --shapes input_ids:1x8/4x64/16x256 ...
      trtforge verify minilm minilm.onnx minilm.engine
      trtforge inspect minilm.engine

    \b
    Exit codes: 0 ok, 1 internal error, 2 usage, 3 accuracy check failed,
    4 invalid input, 5 unsupported (op/option), 6 backend unavailable.
    """
    ctx.meta["trtforge.debug"] = debug


for command in (convert, export, optimize, build, inspect, list_passes, drop_blocks, quantize, verify):
    main.add_command(command)
