"""onnxruntime CPU sessions that compute low-precision Q/DQ graphs as written.

onnxruntime 1.32's CPU graph optimizations compute some low-precision Q/DQ graphs
wrongly: fp8 Q/DQ around Conv (extended level: cosine 0.48 on a two-conv graph) and
int8 Q/DQ EfficientNet-Lite0 converted to fp16 (basic level: cosine -0.06); both are
right with optimizations off. Other int8 Q/DQ graphs run at the basic level: at the
extended level onnxruntime fuses Q/DQ Conv into QLinearConv, whose AVX2 kernel (x86
without VNNI) saturates byte-pair sums to int16: EfficientNet-Lite0 int8 top-1 agreement
0.19 against 1.0 as written (exact integer arithmetic shows the overflow bit for bit);
the basic level does no Q/DQ fusion, so the graph is computed as written on any CPU.
Every place that runs a candidate graph for accuracy
(verify, sensitivity, benchmarks) opens it through `cpu_session` so the rule lives in one
place; calibration's statistics sessions open here too, with the knobs they need (threads,
memory arena, no spinning).
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnxruntime as ort

from converter.core import external_data

THREADS_ENV = "TRTFORGE_THREADS"  # caps onnxruntime's intra-op threads (shared machines, parallel test workers)


def default_threads() -> int:
    """$TRTFORGE_THREADS when set to a positive integer, else 0 (onnxruntime's choice: one per core).

    On a machine other jobs also load, a thread per core spins and waits for cores it does
    not get; a cap of 1 keeps each process to its own core."""
    value = os.environ.get(THREADS_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else 0


_FP8 = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2}


def has_fp8(model: onnx.ModelProto) -> bool:
    return any(i.data_type in _FP8 for i in model.graph.initializer)


def _fp16_qdq(model: onnx.ModelProto) -> bool:
    return any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer) and any(
        n.op_type == "DequantizeLinear" for n in model.graph.node
    )


def has_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def needs_unoptimized(model: onnx.ModelProto) -> bool:
    """True for the graphs onnxruntime's CPU optimizations miscompute (see the module docstring)."""
    return has_fp8(model) or _fp16_qdq(model)


def session_options(
    model: onnx.ModelProto | None,
    *,
    optimize: bool | None = None,
    threads: int = 0,
    arena: bool = True,
    spinning: bool = True,
) -> ort.SessionOptions:
    """`optimize=None` runs `model` unoptimized where it `needs_unoptimized`, optimized otherwise;
    False turns onnxruntime's graph optimizations off outright; True turns them on, at the basic
    level for a model with Q/DQ nodes (no fusion into integer kernels, see the module docstring). `threads=0` is
    onnxruntime's own choice; `arena=False` returns activation memory between runs; `spinning=False`
    stops intra-op threads spinning between runs (for callers that compute between runs)."""
    if optimize is None:
        if model is None:
            raise ValueError("the optimization rule needs the model's structure: pass `optimize`")
        optimize = not needs_unoptimized(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif model is not None and has_qdq(model):  # no fusion into saturating integer kernels (docstring)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.enable_cpu_mem_arena = arena
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    threads = threads or default_threads()
    if threads:
        options.intra_op_num_threads = threads
    return options


def serialized(model: onnx.ModelProto) -> tuple[bytes, external_data.OrtWeights]:
    """`model`'s bytes for onnxruntime, and where the weights of a lazily loaded model are
    (converter/core/external_data.py): onnxruntime reads them from their file by path."""
    if not any(external_data.is_mapped(init) for init in model.graph.initializer):
        return model.SerializeToString(), external_data.OrtWeights()
    copy, weights = external_data.ort_form(model)
    return copy.SerializeToString(), weights


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def return_freed_memory_promptly(threshold: int = 1 << 20) -> None:
    """Have glibc serve allocations of `threshold` bytes or more from their own mappings, handed back
    to the system when freed.

    By default glibc raises that threshold to the largest block freed so far (up to 32 MiB), so
    after a session has folded its weights the next ones land in the heap and stay in the resident
    set after they are freed: a caller that creates and drops sessions one after another (block-by-
    block scoring of an LLM) then grows by a session's weights each time. Fixing the threshold stops
    that; a no-op where the C library is not glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(_M_MMAP_THRESHOLD, threshold)
    except OSError:
        pass


def cpu_session(
    model: onnx.ModelProto | str | Path | bytes,
    *,
    optimize: bool | None = None,
    threads: int = 0,
    arena: bool = True,
    spinning: bool = True,
    weights: external_data.OrtWeights | None = None,
) -> ort.InferenceSession:
    """A CPU session with `session_options`; a path is loaded by onnxruntime itself (external data
    stays on disk); serialized bytes carry no structure to apply the rule to, so they need `optimize`,
    and come with where `serialized` found their weights (`weights`)."""
    knobs = {"optimize": optimize, "threads": threads, "arena": arena, "spinning": spinning}
    if isinstance(model, onnx.ModelProto):
        (source, weights), structure = serialized(model), model
    elif isinstance(model, bytes):
        source, structure = model, None
    else:
        source = str(model)
        structure = onnx.load(source, load_external_data=False) if optimize is None else None  # types, no weights
    options = session_options(structure, **knobs)
    weights = weights or external_data.OrtWeights()
    if weights.folder:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", weights.folder)
    values = [ort.OrtValue.ortvalue_from_numpy(array) for array in weights.arrays]
    if values:
        options.add_external_initializers(weights.names, values)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    session.trtforge_bound = (values, weights)  # onnxruntime may read them for the session's lifetime
    if values:
        external_data.release_pages()  # what onnxruntime copied to set up leaves the resident set
    return session
