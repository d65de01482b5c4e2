"""Progress of a long stage, as a message: `Step` is a str (any log function prints it as a line)
that also says how far its stage is, so a terminal can draw a bar for it.

Use cases report through the one `log(message)` callable they already take; the CLI decides
how to show it (converter/cli/progress.py): bars on a terminal, plain lines in a CI log,
nothing with --quiet.
"""

from __future__ import annotations


class Step(str):
    """`done` of `total` units of `stage` (total None: not known in advance), with a line of text."""

    stage: str
    done: int
    total: int | None
    text: str

    def __new__(cls, stage: str, done: int, total: int | None, text: str = "") -> Step:
        count = f"{done}/{total}" if total else str(done)
        step = super().__new__(cls, f"{stage}: {count}" + (f" {text}" if text else ""))
        step.stage, step.done, step.total, step.text = stage, done, total, text
        return step

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total
