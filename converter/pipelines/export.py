"""torch -> ONNX with either exporter, dynamic axes, external data for large models.

Two exporters, because real users meet both:
- "torchscript" (`torch.onnx.export(dynamo=False)`): mature, opset <= 20, the default;
- "dynamo" (`torch.export` + onnxscript): the future; opset >= 18.
Either way the result is re-saved through model_io, which adds trtforge metadata
(where the model came from, where its real sample data comes from), writes
atomically and switches to external data above 2 GB.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from converter.core.errors import ExportError, InvalidInputError
from converter.core.metadata import EXPORTER, SAMPLE_DATA, SOURCE, TASK, write_metadata
from converter.core.model_io import EXTERNAL_DATA_THRESHOLD, load_model, save_model, sha256_file
from converter.core.model_spec import ModelSpec
from converter.core.version import __version__
from converter.pipelines.model_ref import resolve_model

EXPORTERS = ("torchscript", "dynamo")


@dataclass
class ExportResult:
    path: Path
    exporter: str
    opset: int
    seconds: float
    num_nodes: int
    external_data: bool
    sha256: str

    @property
    def report(self) -> dict[str, Any]:
        """What `trtforge export` prints (--json)."""
        return {
            "path": str(self.path),
            "exporter": self.exporter,
            "opset": self.opset,
            "nodes": self.num_nodes,
            "seconds": self.seconds,
            "external_data": self.external_data,
            "sha256": self.sha256,
        }


def _example_args(spec: ModelSpec):
    import torch

    feeds = spec.sample_feeds(1, 2)[0]
    return tuple(torch.from_numpy(feeds[name]) for name in spec.input_names)


def _export_torchscript(
    module, args, spec: ModelSpec, path: Path, opset: int, dynamic: bool, constant_folding: bool = True
) -> None:
    import torch

    output_names = spec.output_names or None
    axes = {k: v for k, v in spec.dynamic_axes.items() if k in spec.input_names or k in (output_names or [])}
    torch.onnx.export(
        module,
        args,
        str(path),
        dynamo=False,
        input_names=spec.input_names,
        output_names=output_names,
        dynamic_axes=axes if dynamic else None,
        opset_version=opset,
        do_constant_folding=constant_folding,
    )


def _export_dynamo(module, args, spec: ModelSpec, path: Path, opset: int, dynamic: bool) -> None:
    import torch
    from torch.export import Dim

    dynamic_shapes = None
    if dynamic:
        dims: dict[str, Dim] = {}
        dynamic_shapes = {}
        for name in spec.input_names:
            axes = spec.dynamic_axes.get(name, {})
            dynamic_shapes[name] = {
                axis: dims.setdefault(label, Dim(label, min=1 if label == "batch" else 2, max=4096))
                for axis, label in axes.items()
            }
    program = torch.onnx.export(
        module,
        args,
        None,
        dynamo=True,
        input_names=spec.input_names,
        dynamic_shapes=dynamic_shapes,
        opset_version=opset,
        verbose=False,
    )
    program.save(str(path), external_data=True)


def _rename_outputs(model: onnx.ModelProto, names: list[str]) -> None:
    """Give graph outputs the spec's names (the dynamo exporter picks its own)."""
    for output, wanted in zip(model.graph.output, names, strict=False):
        old = output.name
        if old == wanted:
            continue
        for node in model.graph.node:
            node.output[:] = [wanted if o == old else o for o in node.output]
            node.input[:] = [wanted if i == old else i for i in node.input]
        output.name = wanted


def export_model(
    spec: ModelSpec,
    out_path: str | Path,
    exporter: str = "torchscript",
    opset: int | None = None,
    dynamic: bool = True,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    constant_folding: bool = True,
) -> ExportResult:
    """Export `spec`'s module to `out_path` (atomic; external data when weights exceed the threshold).

    `constant_folding=False` keeps the TorchScript exporter's raw graph (what
    benchmarks of our own folding passes start from); the dynamo exporter ignores it.
    """
    if exporter not in EXPORTERS:
        raise InvalidInputError(f"unknown exporter '{exporter}' (choose from {', '.join(EXPORTERS)})")
    opset = opset or (17 if exporter == "torchscript" else 18)
    if exporter == "dynamo" and opset < 18:
        raise InvalidInputError(f"the dynamo exporter needs opset >= 18, got {opset}")
    import torch

    out_path = Path(out_path)
    module = spec.module()
    args = _example_args(spec)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trtforge-export-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "model.onnx"
        try:
            with torch.no_grad():
                if exporter == "torchscript":
                    _export_torchscript(module, args, spec, raw, opset, dynamic, constant_folding)
                else:
                    _export_dynamo(module, args, spec, raw, opset, dynamic)
        except Exception as exc:  # exporters raise many types; the user needs one line
            raise ExportError(
                f"{spec.name}: {exporter} export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
        model = load_model(raw)
    if spec.output_names:
        _rename_outputs(model, spec.output_names)
    model.producer_name, model.producer_version = "trtforge", __version__
    write_metadata(model, {SOURCE: spec.name, EXPORTER: exporter, SAMPLE_DATA: spec.sample_source, TASK: spec.task})
    save_model(model, out_path, external_data_threshold)
    seconds = time.perf_counter() - start
    return ExportResult(
        path=out_path,
        exporter=exporter,
        opset=opset,
        seconds=round(seconds, 3),
        num_nodes=len(model.graph.node),
        external_data=out_path.with_name(out_path.name + ".data").exists(),
        sha256=sha256_file(out_path),
    )


def export(
    model: str,
    out: str | Path,
    *,
    exporter: str = "torchscript",
    opset: int | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    dtypes: dict[str, str] | None = None,
    dynamic: bool = True,
) -> ExportResult:
    """The export use case: a demo name or 'module:factory' (static `shapes`/`dtypes` for a bare module) -> ONNX."""
    ref = resolve_model(model, shapes, dtypes, torch_only=True)
    return export_model(ref.spec, out, exporter=exporter, opset=opset, dynamic=dynamic)
