"""`trtforge passes`: the registered graph passes and pass groups (converter.api.list_passes)."""

from __future__ import annotations

import click
from rich.markup import escape

from converter import api
from converter.cli.options import console, emit, output_options


def _print_catalogue(catalogue: dict) -> None:
    for entry in catalogue["passes"]:
        console.print(f"{entry['name']:<22} {escape(entry['description'])}", highlight=False)
    for name, members in catalogue["groups"].items():
        console.print(f"{name:<22} group: {', '.join(members)}", highlight=False)


@click.command(name="passes")
@output_options(what="catalogue (passes with capabilities and option defaults, groups)")
def list_passes(as_json, quiet):
    """List the registered graph passes and pass groups.

    \b
    Examples:
      trtforge passes
      trtforge passes --json
    """
    emit(api.list_passes(), as_json, quiet, _print_catalogue)
