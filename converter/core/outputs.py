"""The files one command writes, published together or not at all, and never over the input.

A command that writes several files (an ONNX and its report, an engine and its sidecar, a
calibration table) must not leave the first behind when a later one fails, nor replace a
file that is one of its inputs (the input model, or the weights file it reads). So each
output is written under its final name inside a private staging folder beside its
destination (same file system: publishing is a rename), and `publish` moves every staged
file into place, external-data files first, only after everything was written. Leaving the
`with` block by an exception, SIGTERM or Ctrl-C (converter/cli/main.py turns both into
exceptions) removes the staging folders: nothing new is left beside the outputs.

    with Outputs(inputs=[model_path]) as outputs:
        save_model(model, outputs.path(out))
        write_report(report, outputs.path(report_path))
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

import onnx

from converter.core.errors import InvalidInputError
from converter.core.model_io import external_data_files, file_mode
from converter.core.onnx_scan import external_locations

MAX_NAME_BYTES = 250  # NAME_MAX (255) less the '.data' / '.json' a companion file adds


def check_name_length(path: str | os.PathLike) -> Path:
    """`path`, or InvalidInputError when a component is too long for a file system (ENAMETOOLONG
    would otherwise surface from deep inside a write as an internal error)."""
    path = Path(path)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > MAX_NAME_BYTES:
            raise InvalidInputError(
                f"{part[:40]}...: the name is {size} bytes; at most {MAX_NAME_BYTES} "
                "(file systems allow 255, and '.data' or '.json' may be added beside an output)"
            )
    return path


def protected_files(inputs: list[Path]) -> set[Path]:
    """The inputs and, for ONNX inputs, the external-data files they read (resolved)."""
    found: set[Path] = set()
    for path in inputs:
        path = Path(path)
        found.add(path.resolve())
        if path.suffix == ".onnx" and path.is_file():
            found.update((path.parent / location).resolve() for location in _external_files(path))
    return found


def _external_files(path: Path) -> list[str]:
    """The external-data locations `path` reads: scanned without loading its weights
    (converter/core/onnx_scan.py), else by onnx's parser; none for an unreadable file,
    which fails in its loader with its own message."""
    try:
        return external_locations(path)
    except (ValueError, OSError):
        pass
    try:
        return external_data_files(onnx.load(str(path), load_external_data=False))
    except Exception:
        return []


class Outputs:
    """A set of output files published together (module docstring)."""

    def __init__(self, inputs: list[Path] | None = None):
        self.protected = protected_files([Path(p) for p in inputs or []])
        self.staged: dict[Path, Path] = {}  # final path -> its staging folder

    def __enter__(self) -> Outputs:
        return self

    def path(self, final: str | os.PathLike) -> Path:
        """Where to write the output `final` (its name, in a staging folder beside it)."""
        final = check_name_length(final)
        for target in (final, final.with_name(final.name + ".data")):
            if target.resolve() in self.protected:
                raise InvalidInputError(
                    f"{final}: would overwrite {target.name}, which this command reads; write the output elsewhere"
                )
        if final.is_dir():
            raise InvalidInputError(f"{final}: is a folder; give a file path for this output")
        if final in self.staged:
            raise InvalidInputError(f"{final}: named for two outputs of this command")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=f".{final.name[:64]}.trtforge-", dir=final.parent))
        except OSError as exc:
            raise InvalidInputError(f"{final}: cannot write there ({exc.strerror or exc})") from exc
        self.staged[final] = stage
        return stage / final.name

    def _check_collisions(self) -> None:
        """A staged weights file ('<output>.data') may replace only the weights file of the output
        it replaces, never a user's file that merely has that name. (An engine's '.json'
        sidecar is replaced with its engine: it describes the file the user named.)"""
        for final, stage in self.staged.items():
            ours = protected_files([final]) if final.exists() else set()
            for item in stage.iterdir():
                target = final.parent / item.name
                weights = item.name.endswith(".data") and item.name != final.name
                if weights and target.exists() and target.resolve() not in ours:
                    raise InvalidInputError(
                        f"{target}: exists and is not the weights file of {final.name}; trtforge does not "
                        "overwrite it (move it, or write the output elsewhere)"
                    )

    def publish(self) -> None:
        """Move every staged file into place, external-data files before the files that read them."""
        self._check_collisions()
        mode = file_mode()
        for final, stage in self.staged.items():
            files = sorted(stage.iterdir(), key=lambda p: (not p.name.endswith(".data"), p.name))
            for item in files:
                os.chmod(item, mode)
                os.replace(item, final.parent / item.name)

    def discard(self) -> None:
        for stage in self.staged.values():
            shutil.rmtree(stage, ignore_errors=True)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if kind is None:
                self.publish()
        finally:
            self.discard()
