"""How a command shows its progress: bars on a terminal, plain lines in a CI log, nothing when quiet.

A use case reports through one `log(message)` callable; a `converter.core.progress.Step`
message carries how far its stage is. On a terminal (stderr is a TTY) a rich progress
display shows a spinner with the latest message (or count) and a bar per stage that reports
steps toward a known total, removed when it completes; elsewhere (a CI log, a pipe) every
message is a plain line. A stage with many small steps reports only some (an engine build
phase: each tenth), so a log is not flooded. `TRTFORGE_PROGRESS=plain|bars` overrides
the detection.
"""

from __future__ import annotations

import os
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from converter.core.progress import Step


class ProgressDisplay:
    """A context manager that is also the `log` callable handed to the API (see module docstring)."""

    def __init__(self, message: str | None, silent: bool, console: Console):
        self.message, self.silent, self.console = message, silent, console
        mode = os.environ.get("TRTFORGE_PROGRESS", "")
        self.bars = not silent and (mode == "bars" or (mode != "plain" and console.is_terminal))
        self.progress: Progress | None = None
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> ProgressDisplay:
        if self.bars:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[count]}"),  # "3/17" on a stage's bar; nothing on the spinner's line
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.progress.start()
            self.main = self.progress.add_task(escape(self.message or "working"), total=None, count="")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, message: str) -> None:
        if self.silent:
            return
        if isinstance(message, Step):
            self._step(message)
        elif self.progress is not None:
            self.progress.console.print(f"[dim]{escape(message)}[/dim]", highlight=False)
            self.progress.update(self.main, description=escape(message[:100]))
        else:
            self.console.print(f"[dim]{escape(message)}[/dim]", highlight=False)

    def _step(self, step: Step) -> None:
        if self.progress is None:
            self.console.print(f"[dim]{escape(str(step))}[/dim]", highlight=False)
            return
        if step.total is None:  # a count without an end: the spinner's line, not a bar that would linger
            self.progress.update(self.main, description=escape(str(step)[:100]))
            return
        if step.stage not in self.tasks:
            self.tasks[step.stage] = self.progress.add_task(escape(step.stage), total=step.total, count="")
        task = self.tasks[step.stage]
        description = escape(f"{step.stage} {step.text}".strip()[:100])
        count = f"{step.done}/{step.total}"
        self.progress.update(task, completed=step.done, total=step.total, description=description, count=count)
        if step.finished:
            self.progress.remove_task(task)
            del self.tasks[step.stage]
