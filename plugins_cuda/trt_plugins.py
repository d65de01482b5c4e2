"""How a graph with trtforge ops reaches full TensorRT: plugins when they register, else inlining.

`onnx_for_tensorrt(path)` is the hook converter/backends/tensorrt.py calls before parsing:
- no trtforge node in the graph: the file is parsed as it is ("none");
- the plugins register (tensorrt.plugin importable, nvcc present to make the PTX):
  a copy beside the original, with the local functions removed and each trtforge node
  tagged plugin_namespace="trtforge", so the parser creates the AOT plugins ("plugin");
- otherwise: the file as it is, and the parser inlines the ONNX function bodies
  ("inline: <why plugins are unavailable>"), exactly what TensorRT-RTX does.
This machine (CPU only, no full TensorRT) always takes the inline branch.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

from plugins_cuda import DOMAIN


def register_plugins() -> tuple[bool, str]:
    """(True, "") once both ops' AOT plugins are registered with tensorrt.plugin, else (False, why)."""
    try:
        from plugins_cuda.gated_linear_attention import plugin as gla_plugin
        from plugins_cuda.group_quant_matmul import plugin as gqmm_plugin

        gqmm_plugin.register()
        gla_plugin.register()
    except Exception as exc:  # ImportError without full TensorRT, FileNotFoundError without nvcc, ...
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
    return True, ""


def uses_trtforge_ops(model: onnx.ModelProto) -> bool:
    return any(n.domain == DOMAIN for n in model.graph.node)


def for_plugins(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the trtforge local functions and tag the nodes for the parser's plugin lookup."""
    from plugins_cuda.group_quant_matmul import onnx as gqmm_onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    gqmm_onnx.attach(out, bias_everywhere=True)  # the AOT plugin has a fixed arity: bias-less nodes get zeros
    keep = [f for f in out.functions if f.domain != DOMAIN]
    del out.functions[:]
    out.functions.extend(keep)
    for node in out.graph.node:
        if node.domain == DOMAIN and not any(a.name == "plugin_namespace" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("plugin_namespace", DOMAIN))
    return out


@contextlib.contextmanager
def onnx_for_tensorrt(onnx_path: Path, use_plugins: bool | None = None) -> Iterator[tuple[Path, str]]:
    """Yield (file to parse, mode). `use_plugins=None` tries to register the plugins."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    if not uses_trtforge_ops(model):
        yield onnx_path, "none"
        return
    if use_plugins is None:
        use_plugins, why = register_plugins()
    else:
        why = "plugins disabled"
    if not use_plugins:
        yield onnx_path, f"inline: {why}"
        return
    # beside the original, so relative external-data paths still resolve
    fd, tmp = tempfile.mkstemp(suffix=".plugins.onnx", dir=Path(onnx_path).parent)
    os.close(fd)
    try:
        onnx.save(for_plugins(model), tmp)
        yield Path(tmp), "plugin"
    finally:
        Path(tmp).unlink(missing_ok=True)
