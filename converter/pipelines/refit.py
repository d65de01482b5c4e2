"""`refit`: an engine built with --strip-weights (or --refit) gets the weights of an ONNX file.

A weight-stripped engine ships without its weights (kilobytes instead of the model's size);
on the target, TensorRT's refitter reads them from the ONNX the engine was built from,
or from a fine-tuned checkpoint of the same graph, and the engine is saved whole.
Everything checkable without a GPU is checked first: the engine file, its sidecar (was
it built refittable? with which backend?), the ONNX (our untrusted-file checks, external
data included, before TensorRT's parser opens it) and the output path. The refit itself
deserializes the engine, i.e. needs a GPU: without one it stops there (exit 6).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.backends import get_backend, load_sidecar
from converter.backends.base import write_sidecar
from converter.core.errors import BackendUnavailableError, InvalidInputError
from converter.core.model_io import load_model, sha256_file
from converter.core.outputs import Outputs
from converter.verification.reference import is_engine


@dataclass
class RefitResult:
    engine: Path
    report: dict[str, Any]


def refittable_sidecar(engine: Path) -> dict[str, Any] | None:
    """The engine's sidecar when it has one; an engine it says was built without refit is refused."""
    sidecar, _why = load_sidecar(engine)
    if sidecar is not None and not (sidecar.get("build_options") or {}).get("refittable"):
        raise InvalidInputError(
            f"{engine}: built without --refit / --strip-weights (its sidecar says so), so it cannot take new "
            "weights; rebuild it with `trtforge build ... --strip-weights`"
        )
    return sidecar


def refit(engine: str | Path, onnx_path: str | Path, out: str | Path, *, backend: str = "auto") -> RefitResult:
    """Write `out`: `engine` with the weights of `onnx_path` (and its sidecar beside it)."""
    engine, onnx_path, out = Path(engine), Path(onnx_path), Path(out)
    if not is_engine(engine):
        raise InvalidInputError(f"{engine}: expected an engine file (.engine, .plan, .trt)")
    if not engine.is_file():  # missing, a folder, a device or a FIFO
        raise InvalidInputError(
            f"{engine}: no such engine file" if not engine.exists() else f"{engine}: not a regular file"
        )
    if not is_engine(out):
        raise InvalidInputError(f"{out}: the refitted engine's name should end in .engine, .plan or .trt")
    load_model(onnx_path, load_weights=False)  # a broken or hostile ONNX: one line, before TensorRT reads it
    sidecar = refittable_sidecar(engine)
    engine_backend = get_backend(sidecar["backend"] if sidecar and backend == "auto" else backend)
    onnx_sha256 = sha256_file(onnx_path)
    with Outputs(inputs=[engine, onnx_path]) as outputs:
        staged = outputs.path(out)
        ok, why = engine_backend.can_run()
        if not ok:
            raise BackendUnavailableError(
                f"refit needs a GPU and a TensorRT runtime (the engine is deserialized on the device): {why}"
            )
        blob = engine_backend.refit(engine, onnx_path)
        staged.write_bytes(blob)
        report = _refit_report(sidecar, engine, onnx_path, onnx_sha256, blob, engine_backend.name)
        if sidecar is not None:
            write_sidecar(staged, report["sidecar"])
    return RefitResult(out, {k: v for k, v in report.items() if k != "sidecar"})


def _refit_report(
    sidecar: dict[str, Any] | None, engine: Path, onnx_path: Path, onnx_sha256: str, blob: bytes, backend: str
) -> dict[str, Any]:
    """What the command prints, and the refitted engine's sidecar: the original's, now with weights."""
    refit = {
        "engine": str(engine),
        "onnx": str(onnx_path),
        "onnx_sha256": onnx_sha256,
        "same_weights_as_build": bool(sidecar) and sidecar.get("source_sha256") == onnx_sha256,
    }
    report: dict[str, Any] = {"backend": backend, "engine_bytes": len(blob), "refit": refit}
    if sidecar is not None:
        options = {**sidecar.get("build_options", {}), "strip_weights": False}
        report["sidecar"] = {
            **sidecar,
            "engine_bytes": len(blob),
            "engine_sha256": hashlib.sha256(blob).hexdigest(),
            "build_options": options,
            "refit": refit,
        }
    return report
