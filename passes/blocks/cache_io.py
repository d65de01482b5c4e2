"""A decoder's KV cache after blocks were removed: the dead layers' cache I/O goes, the rest is renumbered.

Removing an attention sub-layer (or its block) from a graph exported with its cache
(converter/core/kv_cache.py) leaves `present.{i}.key/value` computed for nothing but those
outputs: the layer's K/V projections and the Concat with its past still run, and a
runtime still allocates, feeds and carries that layer's cache every step. So a layer
whose past key and value no output but the cache needs (not the logits) has its `past_key_values.{i}.*` input,
its `present.{i}.*` output and everything that only fed them removed, and the remaining
layers are renumbered 0..n-1: runtimes (onnxruntime-genai, Optimum, our generation
check) loop over `past_key_values.{i}` for i below the layer count, so a gap would break
them. The metadata's layout (`trtforge.kv_cache`) gets the new count and `renumbered`
(old layer -> new layer or "removed"), which drop-blocks' report shows.
"""

from __future__ import annotations

import json

import onnx

from converter.core.kv_cache import cache_tensor
from converter.core.metadata import KV_CACHE, read_metadata, write_metadata
from passes.blocks.liveness import keep_live, live


def dead_cache_layers(graph: onnx.GraphProto) -> list[int]:
    """Layers whose past key and value nothing but the cache outputs needs: no output besides
    `present.*` (the logits) depends on them, so the layer's attention is gone."""
    roots = [o.name for o in graph.output if (cache_tensor(o.name) or ("",))[0] != "present"]
    _, needed = live(graph, roots=roots)
    inputs = {i.name for i in graph.input}
    layers = {found[1] for o in graph.output if (found := cache_tensor(o.name)) and found[0] == "present"}
    return sorted(
        layer
        for layer in layers
        if all(f"past_key_values.{layer}.{kind}" in inputs for kind in ("key", "value"))
        and not any(f"past_key_values.{layer}.{kind}" in needed for kind in ("key", "value"))
    )


def _rename(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = names.get(value.name, value.name)


def prune_cache(model: onnx.ModelProto) -> dict[str, str]:
    """Remove the dead layers' cache I/O from `model` in place and renumber the rest.

    Returns {old layer: new layer} as strings for the
    report ("4": "3"), with "removed" for the dropped ones; {} when nothing changed.
    """
    graph = model.graph
    dead = dead_cache_layers(graph)
    if not dead:
        return {}
    gone = {f"present.{i}.{kind}" for i in dead for kind in ("key", "value")}
    outputs = [o for o in graph.output if o.name not in gone]
    del graph.output[:]
    graph.output.extend(outputs)
    used = keep_live(graph)
    inputs = [i for i in graph.input if not ((cache_tensor(i.name) or ("",))[0] == "past" and i.name not in used)]
    del graph.input[:]
    graph.input.extend(inputs)
    layers = sorted({found[1] for o in graph.output if (found := cache_tensor(o.name)) and found[0] == "present"})
    order = {old: new for new, old in enumerate(layers)}
    names = {}
    for old, new in order.items():
        for kind in ("key", "value"):
            names[f"past_key_values.{old}.{kind}"] = f"past_key_values.{new}.{kind}"
            names[f"present.{old}.{kind}"] = f"present.{new}.{kind}"
    _rename(graph, names)
    mapping = {str(old): str(new) for old, new in order.items() if old != new}
    mapping.update({str(layer): "removed" for layer in dead})
    recorded = read_metadata(model).get(KV_CACHE)
    if recorded:  # the layout a runtime reads: the new count, and what became of each old layer
        layout = json.loads(recorded)
        renumbered = {**layout.get("renumbered", {}), **mapping}
        layout.update(num_layers=len(layers), renumbered=renumbered)
        write_metadata(model, {KV_CACHE: json.dumps(layout, sort_keys=True)})
    return mapping
