"""Every bad command line of the corpus (command_cases.py): the documented exit code, one line
naming the fault, no traceback, and no file added, changed or deleted anywhere in its folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from converter.cli.main import main
from tests.bad_inputs.command_cases import CASES


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` (links not followed); files with their size and modification
    time (a folder's own mtime changes when a staging folder came and went inside it)."""
    return {
        str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) if not p.is_dir() else (0, 0)
        for p in folder.rglob("*")
    }


def _error_lines(output: str, exit_code: int) -> list[str]:
    """The lines that say what went wrong: ours start with 'error:'; click's own usage errors
    (exit 2, after its usage line) with 'Error:'."""
    prefixes = ("error:", "Error:") if exit_code == 2 else ("error:",)
    return [line for line in output.splitlines() if line.startswith(prefixes)]


def test_the_corpus_covers_every_class_with_enough_cases():
    kinds = {case.kind for case in CASES.values()}
    assert kinds == {"dos", "refuse", "internal", "markup"} and len(CASES) >= 45


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_command_line(name, tmp_path, monkeypatch):
    case = CASES[name]
    folder = tmp_path / name
    folder.mkdir()
    monkeypatch.chdir(folder)  # module:factory cases import their module from the working folder
    args = case.make(folder)
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == case.exit_code, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    if case.exit_code:
        lines = _error_lines(result.output, case.exit_code)
        assert len(lines) == 1 and case.message in lines[0], result.output
        if case.exit_code != 2:
            assert result.output.strip().splitlines()[-1].startswith("error:"), result.output
    else:
        assert case.message in result.output, result.output
    assert _snapshot(tmp_path) == before, "nothing written, changed or deleted"
