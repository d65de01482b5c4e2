"""`trtforge refit`: put an ONNX file's weights into a weight-stripped engine (converter.api.refit)."""

from __future__ import annotations

import click
from rich.markup import escape

from converter import api
from converter.cli.options import PATH, backend_option, console, emit, out_option, output_options


def _print_result(report: dict) -> None:
    same = "the weights it was built with" if report["refit"]["same_weights_as_build"] else "new weights"
    console.print(
        f"refitted {escape(report['refit']['engine'])} with {same} from {escape(report['refit']['onnx'])}: "
        f"{escape(report['out'])} ({report['engine_bytes'] / 1e6:.1f} MB, {report['backend']})",
        highlight=False,
    )


@click.command()
@click.argument("engine", type=PATH)
@click.argument("onnx_file", type=PATH)
@out_option("The refitted engine (its sidecar is written beside it).")
@backend_option(help="Runtime that refits (default: the one the sidecar names).")
@output_options
def refit(engine, onnx_file, out, backend, as_json, quiet):
    """Put ONNX_FILE's weights into ENGINE (built with --strip-weights or --refit); needs a GPU.

    ONNX_FILE is the graph the engine was built from, with the same or new weights (a
    fine-tuned checkpoint). Without a GPU this stops after checking the inputs (exit 6).

    \b
    On a GPU machine (both steps need one):
      trtforge build model.onnx -o model.engine --strip-weights    # ship the small engine
      trtforge refit model.engine model.onnx -o model.full.engine  # on the target
    """
    result = api.refit(engine, onnx_file, out, backend=backend)
    emit({**result.report, "out": str(result.engine)}, as_json, quiet, _print_result)
