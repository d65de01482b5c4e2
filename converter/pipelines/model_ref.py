"""The model argument of every command: a built-in demo, a `module:factory` spec or an ONNX file.

`resolve_model` is the one resolver every use case calls (convert, verify, quantize,
export, drop-blocks): it returns a `ModelRef`, a torch spec or an ONNX path, or
raises the one-line "no such file, demo or spec" error before anything is written.
A user factory is imported and called here only: a spec on the command line means the
user asked for that code to run; a spec named by an ONNX file's metadata is imported
only with `trust_model_code` (a file must not make trtforge run code by itself).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converter.core.errors import InvalidInputError
from converter.core.kv_cache import TASK_WITH_PAST, TASKS
from converter.core.metadata import PROFILES, SOURCE, metadata_value, read_metadata
from converter.core.model_io import load_model
from converter.core.model_spec import Feeds, ModelSpec
from converter.core.profiles import ShapeProfile, profiles_from_json
from converter.demos.models import DEMOS, WITH_PAST_SUFFIX
from converter.demos.sample_data import synthetic_feeds


def _import_factory(spec: str) -> Callable[[], Any]:
    module_name, _, attr = spec.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInputError(f"model spec '{spec}': cannot import module '{module_name}' ({exc})") from exc
    except (Exception, SystemExit) as exc:  # user code failing at import: a SyntaxError, a sys.exit()
        raise InvalidInputError(f"model spec '{spec}': importing {module_name} {_what_failed(exc)}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InvalidInputError(f"model spec '{spec}': '{attr}' is not a callable in {module_name}")
    return factory


def _call_factory(spec: str) -> Any:
    """Import and call a 'module:factory'; its failures become one-line input errors."""
    factory = _import_factory(spec)
    try:
        return factory()
    except (Exception, SystemExit) as exc:  # user code: any exception is the user's model failing to build
        raise InvalidInputError(f"model spec '{spec}': the factory {_what_failed(exc)}") from exc


def _what_failed(exc: BaseException) -> str:
    """'raised ValueError: ...' or 'called sys.exit(0)': user code that exits must not end trtforge with 0."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    return f"raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


Shapes = dict[str, ShapeProfile | tuple[int, ...]]


def as_profiles(shapes: Shapes | None) -> dict[str, ShapeProfile]:
    """Static shapes as one-shape profiles; profiles as they are."""
    return {
        name: shape if isinstance(shape, ShapeProfile) else ShapeProfile(tuple(shape), tuple(shape), tuple(shape))
        for name, shape in (shapes or {}).items()
    }


def dynamic_axes_of(profiles: dict[str, ShapeProfile]) -> dict[str, dict[int, str]]:
    """Each input's dynamic dims, named: axis 0 always (`batch`: a bare `--shapes x:2x16` still
    serves any batch, as before); another axis when it varies between the profile's min and max,
    named `dim<k>` when every input varying there varies over the same range (so input_ids and
    attention_mask share their sequence dim), else `<input>_dim<k>`."""
    ranges: dict[int, set[tuple[int, int]]] = {}
    for prof in profiles.values():
        for axis, (low, high) in enumerate(zip(prof.min, prof.max, strict=True)):
            if low != high:
                ranges.setdefault(axis, set()).add((low, high))
    axes: dict[str, dict[int, str]] = {}
    for name, prof in profiles.items():
        varying = {axis for axis, (low, high) in enumerate(zip(prof.min, prof.max, strict=True)) if low != high}
        labels = {0: "batch"} if prof.min else {}
        for axis in sorted(varying - {0}):
            labels[axis] = f"dim{axis}" if len(ranges[axis]) == 1 else f"{name}_dim{axis}"
        axes[name] = labels
    return axes


def user_spec(spec: str, shapes: Shapes, dtypes: dict[str, str] | None = None) -> ModelSpec:
    """ModelSpec for 'package.module:factory'; the factory returns a ModelSpec or an nn.Module.

    A bare module's inputs are named and shaped by `shapes`: dims that vary between a
    profile's min and max are exported dynamic (`dynamic_axes_of`), the rest fixed."""
    made = _call_factory(spec)
    if isinstance(made, ModelSpec):
        return made
    import torch

    if not isinstance(made, torch.nn.Module):
        raise InvalidInputError(
            f"model spec '{spec}': the factory returned {type(made).__name__}, expected an nn.Module or a ModelSpec"
        )
    bad = {n: d for n, d in (dtypes or {}).items() if d not in ("float32", "float16", "int64", "int32", "bool")}
    if bad:
        raise InvalidInputError(f"--dtypes {bad}: use float32, float16, int64, int32 or bool")
    if not shapes:
        raise InvalidInputError(f"model spec '{spec}': give input shapes, e.g. --shapes x:1x3x224x224")
    profiles = as_profiles(shapes)
    names = list(profiles)
    np_dtypes = {n: np.dtype((dtypes or {}).get(n, "float32")) for n in names}
    opt = {n: prof.opt for n, prof in profiles.items()}

    def feeds(num_batches: int, batch_size: int) -> list[Feeds]:
        """Random inputs at the profiles' opt shapes, `batch_size` rows (export traces at 2: a
        batch of 1 would be specialised away)."""
        shaped = {n: (batch_size, *s[1:]) if s else s for n, s in opt.items()}
        return [synthetic_feeds(shaped, np_dtypes, seed=b) for b in range(num_batches)]

    return ModelSpec(
        name=spec,
        factory=lambda: made.eval(),
        input_names=names,
        output_names=[],
        sample_feeds=feeds,
        dynamic_axes=dynamic_axes_of(profiles),
        profiles=profiles,
        sample_source="synthetic",
    )


def is_torch_spec(model: str) -> bool:
    return model in DEMOS or (":" in model and not Path(model).exists() and not model.endswith(".onnx"))


def with_past(model: str, made: Any) -> ModelSpec:
    """What a factory made, as a decoder with its KV cache (`--task text-generation-with-past`).

    A ModelSpec with `cache` set is one already; a transformers causal LM is wrapped
    (converter/demos/with_past.py); anything else has no cache trtforge can drive.
    """
    if isinstance(made, ModelSpec) and made.cache is not None:
        return made
    module = made.module() if isinstance(made, ModelSpec) else made
    if not hasattr(module, "config") or not hasattr(module, "generate"):
        raise InvalidInputError(
            f"'{model}' --task {TASK_WITH_PAST}: not a decoder with a KV cache (neither a transformers "
            "causal LM nor a ModelSpec with `cache` set)"
        )
    from converter.demos.with_past import HELD_OUT_TEXT, hf_layout, hf_with_past, spec_with_past

    layout, vocab = hf_layout(module), module.config.vocab_size
    return spec_with_past(model, lambda: hf_with_past(module.eval()), layout, vocab, HELD_OUT_TEXT)


def resolve_spec(
    model: str, shapes: Shapes | None = None, dtypes: dict[str, str] | None = None, task: str | None = None
) -> ModelSpec:
    """A demo name or a 'module:factory' spec -> ModelSpec; `task` (kv_cache.TASKS) picks the cache form."""
    if task not in (None, *TASKS):
        raise InvalidInputError(f"--task '{task}': choose from {', '.join(TASKS)}")
    if task == TASK_WITH_PAST:
        if model + WITH_PAST_SUFFIX in DEMOS:
            return DEMOS[model + WITH_PAST_SUFFIX]()
        if model in DEMOS:
            return with_past(model, DEMOS[model]())
        if ":" in model:
            return with_past(model, _call_factory(model))
    if model in DEMOS:
        return DEMOS[model]()
    if ":" in model:
        return user_spec(model, shapes or {}, dtypes)
    if Path(model).exists():
        raise InvalidInputError(f"{model}: this command takes a torch model (a demo or module:factory), not a file")
    raise InvalidInputError(
        f"'{model}': no such file, and not a demo ({', '.join(DEMOS)}) or a package.module:factory spec"
    )


@dataclass(frozen=True)
class ModelRef:
    """What a model argument names: a torch model (`spec`) or an ONNX file (`path`), never both."""

    text: str  # the argument as given
    spec: ModelSpec | None = None
    path: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # an ONNX file's, read when it was checked

    @property
    def is_torch(self) -> bool:
        return self.spec is not None

    @property
    def kind(self) -> str:
        return "torch" if self.spec is not None else "onnx"


def resolve_model(
    model: str | Path,
    shapes: Shapes | None = None,
    dtypes: dict[str, str] | None = None,
    torch_only: bool = False,
    task: str | None = None,
) -> ModelRef:
    """A demo name or 'module:factory' -> its spec; else an ONNX file, checked to load (without weights).

    `shapes` (profiles or static shapes) and `dtypes` name and shape a bare nn.Module
    factory's inputs (an ONNX file's --shapes must name its inputs); with
    `torch_only` (export) a file is an error. `task` picks a torch model's form (with a
    KV cache or not); an ONNX file's inputs say which it is.
    """
    text = str(model)
    if is_torch_spec(text) or torch_only:
        return ModelRef(text, spec=resolve_spec(text, shapes, dtypes, task))
    path = Path(text)
    if not path.exists() and path.suffix != ".onnx":
        resolve_spec(text)  # raises the "no such file, and not a demo or spec" message
    header = load_model(path, load_weights=False)  # a missing or broken file fails here, before any work
    initializers = {init.name for init in header.graph.initializer}
    inputs = [vi.name for vi in header.graph.input if vi.name not in initializers]
    unknown = sorted(set(shapes or {}) - set(inputs))
    if unknown:
        raise InvalidInputError(f"--shapes names unknown input(s) {unknown} (inputs: {inputs})")
    return ModelRef(text, path=path, metadata=read_metadata(header))


def feeds_for_source(
    source: str, num_batches: int, batch_size: int, trust_model_code: bool = False
) -> list[Feeds] | None:
    """Real sample feeds named by ONNX metadata 'trtforge.sample_data'.

    'demo:<name>' names a built-in demo; 'spec:<module>:<factory>' a user factory
    that returns a ModelSpec with real sample data.
    """
    kind, _, name = source.partition(":")
    if kind == "demo" and name in DEMOS:
        return DEMOS[name]().sample_feeds(num_batches, batch_size)
    if kind == "spec" and ":" in name and trust_model_code:
        made = _call_factory(name)
        if isinstance(made, ModelSpec):
            return made.sample_feeds(num_batches, batch_size)
    return None


def spec_from_metadata(model, trust_model_code: bool = False) -> ModelSpec | None:
    """The spec an exported ONNX came from (metadata 'trtforge.source'), for its default profiles.

    A user `module:factory` named by a file is imported only with trust_model_code.
    """
    source = metadata_value(model, SOURCE)
    if source in DEMOS:
        return DEMOS[source]()
    if ":" in source and trust_model_code:
        try:
            made = _call_factory(source)
        except InvalidInputError:
            return None
        return made if isinstance(made, ModelSpec) else None
    return None


def default_profiles(model, spec: ModelSpec | None = None, trust_model_code: bool = False) -> dict[str, ShapeProfile]:
    """The profiles an engine build uses when the user gives none: those `export` recorded in the
    metadata, else the spec's (a torch model, or the demo the file names)."""
    inputs = {vi.name for vi in model.graph.input}
    found = profiles_from_json(metadata_value(model, PROFILES))
    if not found:
        spec = spec or spec_from_metadata(model, trust_model_code)
        found = dict(spec.profiles) if spec else {}
    return {name: prof for name, prof in found.items() if name in inputs}
