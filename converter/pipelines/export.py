"""torch -> ONNX with either exporter, dynamic axes, external data for large models.

Two exporters, because real users meet both:
- "torchscript" (`torch.onnx.export(dynamo=False)`): mature, opset <= 20, the default;
- "dynamo" (`torch.export` + onnxscript): the future; opset >= 18.
Either way the result is re-saved through model_io, which adds trtforge metadata
(where the model came from, where its real sample data comes from), writes
atomically and switches to external data above 2 GB.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from converter.core.errors import ExportError, InvalidInputError
from converter.core.metadata import EXPORTER, KV_CACHE, PROFILES, SAMPLE_DATA, SOURCE, TASK, write_metadata
from converter.core.model_io import load_model, save_model, sha256_file
from converter.core.model_spec import ModelSpec
from converter.core.profiles import ShapeProfile, profiles_to_json
from converter.core.version import __version__
from converter.demos.sample_data import fit_feeds
from converter.demos.with_past import cache_feeds, prompt_tokens
from converter.pipelines.model_ref import as_profiles, resolve_model

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


def static_shapes(spec: ModelSpec, given: dict[str, ShapeProfile]) -> dict[str, tuple[int, ...]]:
    """The fixed input shapes of a `--static` export: the user's profile's opt shape, else the
    spec's opt shape at batch 1 (a static engine serves one request at a time)."""
    shapes = {}
    for name in spec.input_names:
        if name in given:
            shapes[name] = given[name].opt
        elif name in spec.profiles:
            shapes[name] = (1, *spec.profiles[name].opt[1:])
    return shapes


def _example_args(spec: ModelSpec, static: dict[str, tuple[int, ...]] | None):
    """Real sample data to trace with: batch 2 for a dynamic export (a batch of 1 would be
    specialised away), the static shapes (padded/truncated real data) otherwise; a cache
    model's real prompt continued after a real cache."""
    import torch

    if spec.cache is not None:  # 8 new tokens after 8 cached: no length of 1 for the exporter to specialise
        feeds = cache_feeds(spec.module(), spec.cache, prompt_tokens(2, 16, 2**31), prefix=8)
    elif static is None:
        feeds = spec.sample_feeds(1, 2)[0]
    else:
        batch = max((shape[0] for shape in static.values()), default=1)
        feeds = fit_feeds(spec.sample_feeds(1, batch), {n: list(s) for n, s in static.items()})[0]
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
    """torch.export + onnxscript; dynamic dims given per positional argument.

    `dynamic_shapes` goes as a tuple in the order of `args`, not a dict keyed by our
    input names: torch.export matches a dict against the forward's parameter names,
    which need not be ours (EfficientNet's forward takes `inputs`, we call it `image`).
    """
    import torch
    from torch.export import Dim

    dynamic_shapes = None
    if dynamic:
        dims: dict[str, Dim] = {}

        def dim(name: str, axis: int, label: str) -> Dim:
            """torch.export's Dim over the profile's range (a dim below 2 is specialised, so 2 up)."""
            prof = spec.profiles.get(name)
            low, high = (prof.min[axis], prof.max[axis]) if prof and axis < len(prof.min) else (1, 4096)
            low = 1 if label == "batch" else max(low, 2)
            return dims.setdefault(label, Dim(label, min=low, max=max(high, low + 1, 4096)))

        dynamic_shapes = tuple(
            {axis: dim(name, axis, label) for axis, label in spec.dynamic_axes.get(name, {}).items()}
            for name in spec.input_names
        )
        if spec.cache is not None:  # forward(input_ids, attention_mask, position_ids, *past): past is one tuple
            fixed = len(spec.input_names) - len(spec.cache.past_names())
            dynamic_shapes = (*dynamic_shapes[:fixed], dynamic_shapes[fixed:])
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


_GENERATED_DIM = re.compile(r"^[A-Za-z]+\d+_dim_\d+$")  # TorchScript's names for output dims: 'MatMul699_dim_0'


def _rename_outputs(model: onnx.ModelProto, names: list[str]) -> None:
    """Give graph outputs the spec's names (the exporters pick their own), and their
    exporter-generated symbolic dims the output's name ('logits_dim0')."""
    for output, wanted in zip(model.graph.output, names, strict=False):
        for axis, dim in enumerate(output.type.tensor_type.shape.dim):
            if _GENERATED_DIM.match(dim.dim_param):
                dim.dim_param = f"{wanted}_dim{axis}"
        old = output.name
        if old == wanted:
            continue
        for node in model.graph.node:
            node.output[:] = [wanted if o == old else o for o in node.output]
            node.input[:] = [wanted if i == old else i for i in node.input]
        output.name = wanted


def _output_names(spec: ModelSpec, given: list[str] | None, count: int) -> list[str]:
    """The graph outputs' names: the user's (`--output-names`), the spec's, else `output` /
    `output_<i>` (the exporters name a bare module's outputs after internal values, e.g. '699')."""
    if given:
        if len(given) != count or len(set(given)) != count:
            raise InvalidInputError(
                f"--output-names {','.join(given)}: {spec.name} has {count} output(s); give {count} distinct names"
            )
        return list(given)
    if spec.output_names:
        return spec.output_names
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NOT_USER_ADVICE = re.compile(r"(please )?(report|file|open) (a|an|this) (bug|issue)|github\.com/pytorch", re.I)


def exporter_message(exc: BaseException) -> str:
    """One readable line from an exporter's exception: colour codes stripped, the first line
    that says something, no "please file a PyTorch issue" (the user cannot act on it)."""
    lines = [_ANSI.sub("", line).strip() for line in str(exc).splitlines()]
    useful = [line for line in lines if line and not _NOT_USER_ADVICE.search(line)]
    text = useful[0] if useful else ""
    text = text[:300] + ("..." if len(text) > 300 else "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def _exporter_quiet() -> Iterator[None]:
    """The exporters' warnings and log lines (e.g. "torchvision is not installed") say nothing
    the user can act on; trtforge reports what matters itself."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def export_model(
    spec: ModelSpec,
    out_path: str | Path,
    exporter: str = "torchscript",
    opset: int | None = None,
    dynamic: bool = True,
    external_data_threshold: int | None = None,
    constant_folding: bool = True,
    profiles: dict[str, ShapeProfile] | None = None,
    output_names: list[str] | None = None,
) -> ExportResult:
    """Export `spec`'s module to `out_path` (atomic; external data when weights exceed the threshold).

    `profiles` (by input name) override the spec's; the result is recorded in the
    metadata (`trtforge.profiles`) as the shapes `build` uses by default. A static
    export (`dynamic=False`) fixes every input at `static_shapes`.
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
    given = profiles or {}
    unknown = sorted(set(given) - set(spec.input_names))
    if unknown:
        raise InvalidInputError(
            f"--shapes {', '.join(unknown)}: {spec.name} has no such input (inputs: {', '.join(spec.input_names)})"
        )
    profiles = {**spec.profiles, **given}
    static = None if dynamic else static_shapes(spec, given)
    if static is not None:
        profiles = {name: ShapeProfile(shape, shape, shape) for name, shape in static.items()}
    module = spec.module()
    args = _example_args(spec, static)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trtforge-export-") as tmp, _exporter_quiet():
        raw = Path(tmp) / "model.onnx"
        try:
            with torch.no_grad():
                if exporter == "torchscript":
                    _export_torchscript(module, args, spec, raw, opset, dynamic, constant_folding)
                else:
                    _export_dynamo(module, args, spec, raw, opset, dynamic)
        except Exception as exc:  # exporters raise many types; the user needs one line
            raise ExportError(f"{spec.name}: {exporter} export failed: {exporter_message(exc)}") from exc
        del module, args  # the exporter's file holds the weights now: torch's copy goes first
        model = load_model(raw)  # its weights stay in the scratch file and stream into the output
        _rename_outputs(model, _output_names(spec, output_names, len(model.graph.output)))
        model.producer_name, model.producer_version = "trtforge", __version__
        entries = {SOURCE: spec.name, EXPORTER: exporter, SAMPLE_DATA: spec.sample_source, TASK: spec.task}
        if profiles:
            entries[PROFILES] = profiles_to_json(profiles)
        if spec.cache is not None:
            entries[KV_CACHE] = spec.cache.to_json()
        write_metadata(model, entries)
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
    shapes: dict[str, ShapeProfile | tuple[int, ...]] | None = None,
    dtypes: dict[str, str] | None = None,
    dynamic: bool = True,
    output_names: list[str] | None = None,
    task: str | None = None,
) -> ExportResult:
    """The export use case: a demo name or 'module:factory' -> ONNX (`task`: kv_cache.TASKS).

    `shapes` are profiles (or static shapes) by input name: a bare nn.Module's input
    shapes, a demo's profile for later builds, the fixed shapes of a static export.
    """
    profiles = as_profiles(shapes)
    ref = resolve_model(model, profiles, dtypes, torch_only=True, task=task)
    return export_model(
        ref.spec, out, exporter=exporter, opset=opset, dynamic=dynamic, profiles=profiles, output_names=output_names
    )
