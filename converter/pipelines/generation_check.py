"""Cache models in the pipelines: finding a graph's cache, its engine profiles, its generation check.

- `cache_layout(model)`: the layout `export` recorded (`trtforge.kv_cache`), else the one
  the graph's inputs spell (Optimum's `past_key_values.{i}.key` names), else None.
- `engine_profiles`: what an engine of a cache model holds by default: a prefill and a
  decode profile (kv_cache.py), unless the user named shapes or profiles.
- `generation_checks`: greedy decoding of real prompts by the reference (the torch module
  with its cache, or the source graph) and by each candidate, compared token by token
  (converter/verification/generation.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx

from converter.core.kv_cache import CacheLayout, layout_from_inputs
from converter.core.metadata import KV_CACHE, metadata_value
from converter.core.model_io import load_model
from converter.core.model_spec import ModelSpec
from converter.core.profiles import ShapeProfile
from converter.demos.with_past import prompt_tokens
from converter.pipelines.model_ref import ModelRef
from converter.verification.compare import Runner, TorchRunner
from converter.verification.generation import Generation, GenerationCheck, compare_generations, greedy

# What the default recipe adds for a decoder with a KV cache: Attention (opset 23, TensorRT
# >= 10.14 and TensorRT-RTX) with the cache concatenated outside it, RMSNorm and rotary fused.
DECODER_PASSES = "fuse-opset23"
_ELEMENT_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}


def _dims(value_info: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


def cache_layout(model: onnx.ModelProto) -> CacheLayout | None:
    """The KV-cache layout of a decoder graph, or None for a graph without a cache."""
    dtypes = {vi.name: _ELEMENT_TYPES.get(vi.type.tensor_type.elem_type, "float32") for vi in model.graph.input}
    recorded = metadata_value(model, KV_CACHE)
    if recorded:  # the graph's own type wins: the precision pass retypes the cache after export
        layout = CacheLayout.from_json(recorded, f"metadata {KV_CACHE}")
        return dataclasses.replace(layout, dtype=dtypes.get("past_key_values.0.key", layout.dtype))
    initializers = {init.name for init in model.graph.initializer}
    inputs = {vi.name: _dims(vi) for vi in model.graph.input if vi.name not in initializers}
    return layout_from_inputs(inputs, dtypes)


def is_cache_model(ref: ModelRef) -> bool:
    """Whether the model argument is a decoder with a KV cache (its spec, or its graph's inputs)."""
    if ref.spec is not None:
        return ref.spec.cache is not None
    return cache_layout(load_model(ref.path, load_weights=False)) is not None


def engine_profiles(
    layout: CacheLayout | None, shapes: dict[str, ShapeProfile], profiles: list[dict[str, ShapeProfile]]
) -> list[dict[str, ShapeProfile]]:
    """The optimization profiles to build: the user's groups; else, for a cache model without
    `--shapes`, prefill + decode; else [] (one profile from the shapes, as for any model)."""
    if profiles:
        return profiles
    if layout is not None and not shapes:
        return layout.profiles()
    return []


def engine_shapes(
    graph: onnx.ModelProto,
    defaults: dict[str, ShapeProfile],
    shapes: dict[str, ShapeProfile] | None = None,
    groups: list[dict[str, ShapeProfile]] | None = None,
) -> dict[str, Any]:
    """BuildConfig's `profiles` and `profile_sets` for an engine of `graph`: the `defaults` it
    has inputs for (export's, a spec's) under the user's `shapes`; the user's profile `groups`,
    else a cache model's prefill + decode, as the sets."""
    inputs = {value.name for value in graph.graph.input}
    single = {**{name: prof for name, prof in defaults.items() if name in inputs}, **(shapes or {})}
    return {"profiles": single, "profile_sets": engine_profiles(cache_layout(graph), shapes or {}, list(groups or []))}


def vocab_size(model: onnx.ModelProto) -> int:
    """The logits' last dim when static (prompt ids must stay below it), else the byte range."""
    for output in model.graph.output:
        if output.name == "logits":
            last = _dims(output)[-1:]
            if last and isinstance(last[0], int) and last[0] > 0:
                return last[0]
    return 256


def generation_checks(
    reference: Runner,
    candidates: list[Runner],
    layout: CacheLayout,
    vocab: int,
    prompts: int = 8,
    steps: int = 32,
) -> list[GenerationCheck]:
    """Each candidate's greedy generation (prefill, then decode with its own cache) against the reference's.

    The prompts are held-out real text (converter/demos/decoder_lm.py's split), as long
    as the prefill profile and the cache leave room for (at most 64), run in batches the
    engine's profiles hold."""
    length = max(1, min(64, layout.max_prompt, layout.max_length - steps))
    tokens = prompt_tokens(prompts, length, vocab)
    expected = _in_batches(reference, layout, tokens, steps)
    return [
        compare_generations(expected, _in_batches(runner, layout, tokens, steps), (reference.name, runner.name), length)
        for runner in candidates
    ]


def _in_batches(runner: Runner, layout: CacheLayout, tokens, steps: int) -> Generation:
    """greedy() over the prompts in batches the engine's profiles hold (at most layout.max_batch)."""
    parts = [
        greedy(runner, layout, tokens[i : i + layout.max_batch], steps) for i in range(0, len(tokens), layout.max_batch)
    ]
    return Generation(
        np.concatenate([p.tokens for p in parts]),
        [np.concatenate(step) for step in zip(*(p.logits for p in parts), strict=True)],
    )


def torch_reference(spec: ModelSpec) -> Runner:
    return TorchRunner(spec.module(), spec.input_names, spec.output_names, name="torch")


def generation_summary(checks: list[GenerationCheck]) -> dict:
    """The report's `generation` entry: every check, and whether all were token-exact."""
    return {
        "checks": [check.to_dict() for check in checks],
        "identical": bool(checks) and all(check.identical for check in checks),
        "summary": "; ".join(f"{c.candidate}: {c.summary}" for c in checks),
    }
