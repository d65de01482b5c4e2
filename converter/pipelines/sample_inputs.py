"""Where a run's input samples come from, in order of preference.

1. a file the user gives (`--load-inputs x.npz`: one array per input name);
2. the torch model spec's real sample data (demos: text or photographs);
3. the ONNX metadata key `trtforge.sample_data`, which `export` writes, naming that
   same real data for an ONNX file on its own (a built-in demo always; a user
   `module:factory` only with trust_model_code, since that imports and runs code
   named by the file);
4. seeded random data shaped from the graph, reported as "synthetic" so that no
   accuracy claim rests on noise unawares.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx

from converter.core import polygraphy_json
from converter.core.arrays import read_npz
from converter.core.errors import InvalidInputError, TrtforgeError
from converter.core.kv_cache import synthetic_feeds as cache_synthetic_feeds
from converter.core.metadata import SAMPLE_DATA, metadata_value
from converter.core.model_io import atomic_path, atomic_write_text
from converter.core.model_spec import Feeds, ModelSpec
from converter.core.profiles import ShapeProfile
from converter.demos.sample_data import fit_feeds, synthetic_feeds
from converter.pipelines.generation_check import cache_layout, vocab_size
from converter.pipelines.model_ref import feeds_for_source

T = TypeVar("T")


@dataclass
class SampleInputs:
    feeds: list[Feeds]
    source: str  # "file:<path>", "demo:<name>", "synthetic"

    @property
    def count(self) -> int:
        return sum(len(next(iter(f.values()))) if f else 0 for f in self.feeds)


def load_inputs_file(path: str | Path) -> list[Feeds]:
    """An .npz of input arrays (one batch), or Polygraphy's inputs JSON (a batch per iteration)
    -> feeds; errors name the file and the bad array."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such inputs file")
    batches = polygraphy_json.read_inputs(path) if path.suffix.lower() == ".json" else [read_npz(path)]
    for feeds in batches:
        _check_arrays(path, feeds)
    return batches


def _check_arrays(path: Path, feeds: Feeds) -> None:
    if not feeds:
        raise InvalidInputError(f"{path}: holds no arrays")
    for name, value in feeds.items():
        if value.ndim == 0 or len(value) == 0:
            raise InvalidInputError(f"{path}: input '{name}' has no rows (shape {list(value.shape)})")
        if value.dtype.kind not in "biuf":
            raise InvalidInputError(f"{path}: input '{name}' has non-numeric dtype {value.dtype}")
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise InvalidInputError(f"{path}: input '{name}' contains NaN or Inf")


def check_against_graph(inputs: SampleInputs, model: onnx.ModelProto, where: str) -> None:
    """Every graph input present with the right dtype, rank and static dims."""
    initializers = {init.name for init in model.graph.initializer}
    for value_info in model.graph.input:
        name = value_info.name
        if name in initializers:  # an overridable constant (ir_version < 4 models): fed only when given
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]
        dtype = _np_dtype(value_info.type.tensor_type.elem_type)
        for feeds in inputs.feeds:
            if name not in feeds:
                raise InvalidInputError(f"{where}: sample data has no array for input '{name}'")
            if dtype is not None and feeds[name].dtype != dtype:
                raise InvalidInputError(f"{where}: sample '{name}' is {feeds[name].dtype}, the model expects {dtype}")
            shape = feeds[name].shape
            if len(shape) != len(dims) or any(d > 0 and d != s for d, s in zip(dims, shape, strict=False)):
                raise InvalidInputError(
                    f"{where}: sample '{name}' has shape {list(shape)}, the model expects {dims} (-1 = any)"
                )
    check_index_ranges(inputs, model, where)


def run_reference(sample: SampleInputs, make: Callable[[], T]) -> T:
    """`make()` (running the reference model on the sample), where a failure on inputs the user
    gave (--load-inputs) is the inputs' fault: one line naming the file, not an internal error."""
    try:
        return make()
    except TrtforgeError:
        raise
    except Exception as exc:
        if not sample.source.startswith("file:"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InvalidInputError(
            f"{sample.source[5:]}: the reference model fails on these inputs ({type(exc).__name__}: {first[:300]})"
        ) from exc


def embedding_tables(model: onnx.ModelProto) -> dict[str, tuple[str, int]]:
    """Graph inputs used directly as Gather indices into a constant table: input -> (node, rows).

    Token ids past the vocabulary fail deep inside onnxruntime or torch; checked here, the
    error names the input, the id and the table's size.
    """
    rows = {init.name: list(init.dims) for init in model.graph.initializer}
    graph_inputs = {vi.name for vi in model.graph.input} - set(rows)
    found: dict[str, tuple[str, int]] = {}
    for node in model.graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[1] not in graph_inputs:
            continue
        dims = rows.get(node.input[0])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if dims and -len(dims) <= axis < len(dims):
            found.setdefault(node.input[1], (node.name or node.output[0], dims[axis]))
    return found


def check_index_ranges(inputs: SampleInputs, model: onnx.ModelProto, where: str) -> None:
    """Every id fed to an embedding table lies in [0, rows)."""
    for name, (node, size) in embedding_tables(model).items():
        for feeds in inputs.feeds:
            ids = feeds.get(name)
            if ids is None or ids.size == 0 or ids.dtype.kind not in "iu":
                continue
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= size:
                bad = low if low < 0 else high
                raise InvalidInputError(
                    f"{where}: sample '{name}' holds id {bad}; it indexes {node} with {size} rows (valid 0..{size - 1})"
                )


def _np_dtype(elem_type: int) -> np.dtype | None:
    """The numpy dtype of an ONNX element type; None when unset or not a numpy type (bfloat16, fp8)."""
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)) if elem_type else None
    except (KeyError, TypeError, ValueError):
        return None


def static_dims(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Each graph input's dims, -1 where the dim is symbolic or unknown."""
    return {
        vi.name: [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in vi.type.tensor_type.shape.dim
        ]
        for vi in model.graph.input
    }


def _fitted(feeds: list[Feeds], model: onnx.ModelProto | None) -> list[Feeds]:
    """Real feeds fitted to a static graph's fixed dims (a `--static` export); others unchanged."""
    if model is None:
        return feeds
    dims = static_dims(model)
    fixed = {name: shape for name, shape in dims.items() if any(d > 0 for d in shape)}
    return fit_feeds(feeds, fixed) if fixed else feeds


def _graph_shapes(model: onnx.ModelProto, profiles: dict[str, ShapeProfile]) -> tuple[dict, dict]:
    shapes, dtypes = {}, {}
    for value_info in model.graph.input:
        tensor_type = value_info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor_type.shape.dim]
        shape = profiles[value_info.name].opt if value_info.name in profiles else tuple(d if d > 0 else 1 for d in dims)
        shapes[value_info.name] = tuple(shape)
        dtypes[value_info.name] = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
    return shapes, dtypes


def resolve_inputs(
    model: onnx.ModelProto | None,
    spec: ModelSpec | None = None,
    inputs_file: str | Path | None = None,
    num_batches: int = 2,
    batch_size: int = 4,
    profiles: dict[str, ShapeProfile] | None = None,
    trust_model_code: bool = False,
) -> SampleInputs:
    """Pick the best available sample inputs (see module docstring)."""
    if inputs_file:
        return SampleInputs(load_inputs_file(inputs_file), f"file:{inputs_file}")
    if spec is not None and spec.sample_source != "synthetic":
        return SampleInputs(_fitted(spec.sample_feeds(num_batches, batch_size), model), spec.sample_source)
    if model is not None:
        source = metadata_value(model, SAMPLE_DATA)
        feeds = feeds_for_source(source, num_batches, batch_size, trust_model_code) if source else None
        if feeds is not None:
            return SampleInputs(_fitted(feeds, model), source)
        layout = cache_layout(model)
        if layout is not None:  # random, but a consistent decode step: mask and positions fit the cache
            vocab = vocab_size(model)
            feeds = [cache_synthetic_feeds(layout, batch_size, vocab, seed=b) for b in range(num_batches)]
            return SampleInputs(feeds, "synthetic")
        shapes, dtypes = _graph_shapes(model, profiles or {})
        return SampleInputs([synthetic_feeds(shapes, dtypes, seed=b) for b in range(num_batches)], "synthetic")
    if spec is not None:
        return SampleInputs(spec.sample_feeds(num_batches, batch_size), spec.sample_source)
    raise InvalidInputError("no model to derive sample inputs from")


def save_feeds(sample: SampleInputs, path: str | Path) -> None:
    """Write the sample inputs for --load-inputs elsewhere, atomically: a `.json` path gets every
    batch in Polygraphy's format (`polygraphy run --load-inputs` reads it), else the first batch as .npz."""
    if Path(path).suffix.lower() == ".json":
        atomic_write_text(path, polygraphy_json.dumps_inputs(sample.feeds))
        return
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **sample.feeds[0])
