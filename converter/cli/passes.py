"""`trtforge passes`: the registered graph passes and pass groups."""

from __future__ import annotations

import click

from converter.cli.options import console
from passes.registry import DESCRIPTIONS, GROUPS


@click.command(name="passes")
def list_passes():
    """List the registered graph passes."""
    for name, text in DESCRIPTIONS.items():
        console.print(f"{name:<16} {text}")
    for name, members in GROUPS.items():
        console.print(f"{name:<16} group: {', '.join(members)}")
