"""Progress: bars on a terminal, plain lines in a CI log, nothing when quiet."""

from __future__ import annotations

import io

from rich.console import Console

from converter.cli.progress import ProgressDisplay
from converter.core.progress import Step


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=120), out


def _run(display: ProgressDisplay) -> None:
    with display as log:
        log("exporting minilm")
        for i in range(101):
            log(Step("passes", i, 100, f"pass{i}"))
        log(Step("budget search", 3, None, "int8: cosine 0.997"))


def test_a_step_is_a_line_wherever_a_string_is_expected():
    step = Step("engine build: Building engine", 3, 6, "tactics")
    assert step == "engine build: Building engine: 3/6 tactics" and not step.finished
    assert Step("search", 7, None) == "search: 7" and Step("x", 6, 6).finished


def test_plain_lines_in_a_log(monkeypatch):
    monkeypatch.delenv("TRTFORGE_PROGRESS", raising=False)
    console, out = _console(terminal=False)
    _run(ProgressDisplay("converting...", False, console))
    lines = out.getvalue().splitlines()
    assert lines[0] == "exporting minilm"
    passes = [line for line in lines if line.startswith("passes:")]
    assert len(passes) == 101 and passes[-1] == "passes: 100/100 pass100"  # what the stage reports, as lines
    assert lines[-1] == "budget search: 3 int8: cosine 0.997"


def test_bars_on_a_terminal_and_nothing_when_quiet(monkeypatch):
    monkeypatch.delenv("TRTFORGE_PROGRESS", raising=False)
    console, out = _console(terminal=True)
    display = ProgressDisplay("converting...", False, console)
    assert display.bars
    _run(display)
    assert "exporting minilm" in out.getvalue() and not display.tasks  # a finished stage's bar is removed
    assert "budget search: 3" in out.getvalue()  # a count without a total: the spinner's line
    monkeypatch.setenv("TRTFORGE_PROGRESS", "plain")
    assert not ProgressDisplay("x", False, _console(terminal=True)[0]).bars
    console, out = _console(terminal=True)
    _run(ProgressDisplay("converting...", True, console))
    assert out.getvalue() == ""
