"""Where `convert`'s files go: staged, then moved into the output folder in one step.

Everything a run writes goes into a staging folder beside the output folder; only a run
that succeeded publishes, by renames, so a failure or a signal leaves the output folder
(and any input inside it) as it was, and an input is never overwritten by an output.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from converter.core.errors import InvalidInputError
from converter.core.outputs import protected_files

CONVERT_OUTPUTS = ("model.onnx", "model.opt.onnx", "model.engine", "model.engine.json", "report.json", "report.html")


def refuse_overwriting_inputs(out_dir: Path, inputs: list[str | Path]) -> None:
    """An input (or the weights it reads) inside `out_dir` under a name convert writes would be replaced."""
    protected = protected_files([Path(p) for p in inputs])
    for name in CONVERT_OUTPUTS:
        for target in (out_dir / name, out_dir / f"{name}.data"):
            if target.resolve() in protected:
                raise InvalidInputError(
                    f"{target}: is an input of this run, and convert writes {target.name} into {out_dir}; "
                    "choose another --out"
                )


def publish(stage: Path, out_dir: Path) -> None:
    """Move the staged files into `out_dir`, weights files first; an older run's others are left
    alone. SIGTERM/SIGINT wait until the renames are done (a few milliseconds), so a signal
    never leaves half a set of outputs."""
    blocked = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for item in sorted(stage.iterdir(), key=lambda p: (not p.name.endswith(".data"), p.name)):
            os.replace(item, out_dir / item.name)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def point_at(out_dir: Path, result: Any) -> None:
    """Point the result and its report at the files' final paths in `out_dir`."""
    for entry in result.report["artifacts"]:
        entry["path"] = str(out_dir / Path(entry["path"]).name)
    result.out_dir = out_dir
    result.onnx = out_dir / "model.opt.onnx"
    result.engine = out_dir / "model.engine"
    result.paths = {
        "onnx": result.onnx,
        "engine": result.engine,
        "report": out_dir / "report.json",
        "html": out_dir / "report.html",
    }
