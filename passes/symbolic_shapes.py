"""Symbolic shapes of a graph: every dim named ('batch', 'sequence', ...) by onnxruntime's
symbolic shape inference, with its merges of dims checked before a pass relies on them.

Passes that prove shape facts (fold-shapes, the attention fusion's KV checks) read dims
from here; the inference runs on the graph's weight-free export (passes/model_utils.py).
"""

from __future__ import annotations

import contextlib
import functools
import io
import tempfile

import onnx
import onnx_graphsurgeon as gs

from passes.model_utils import export_graph


def symbolic_dims(graph: gs.Graph, auto_merge: bool) -> dict[str, list[int | str]]:
    """Tensor name -> dims (ints, or symbol names) from onnxruntime's symbolic shape inference.

    `auto_merge` lets inference assume that dims meeting at a broadcast are equal: wrong
    for any proof, since a valid graph may broadcast a dim that is 1 at run time against
    another (an input [M, D] added to [N, D], M = 1); `checked_symbolic_dims` keeps only the
    merges a valid run forces. Falls back to onnx's own inference. Unknown dims
    are named '?<tensor>:<axis>', equal to nothing else. Inference runs in a scratch
    directory: when incomplete, onnxruntime writes a debug model into the cwd.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    def infer(model: onnx.ModelProto) -> onnx.ModelProto | None:
        return SymbolicShapeInference.infer_shapes(model, auto_merge=auto_merge, guess_output_rank=False)

    return _symbolic_dims(graph, infer)


def checked_symbolic_dims(graph: gs.Graph) -> tuple[dict[str, list[int | str]], str | None]:
    """Symbolic dims with the merges of dims that a valid run forces equal, and no others.

    Inference with `auto_merge` runs with every merge it makes recorded. Its dims are used
    when each merge joins one symbol t with clamps Min(K, t), K >= 2 (a table sliced to a
    dynamic length, e.g. position embeddings: Min(512, sequence)): Min(K, t) is 1 exactly
    when t is, so where they broadcast a valid run has them equal. Any other merge (two
    input dims, a dim and a constant) may be wrong at run time: then the dims of inference
    without merging are used. Returns (dims, why the merged dims were not used, or None).
    """
    merges: list[list] = []
    try:
        dims = _symbolic_dims(graph, functools.partial(_infer_recording_merges, merges=merges), fallback=False)
    except Exception:  # onnxruntime's inference internals changed, or it failed: no merging then
        dims, merges = None, [["(merging inference failed)"]]
    unforced = [m for m in merges if not _forced_equal(m)]
    if dims is not None and not unforced:
        return dims, None
    shown = ", ".join(str(s) for s in unforced[0])
    return symbolic_dims(graph, auto_merge=False), f"symbolic shapes not merged: dims {shown} need not be equal"


def _infer_recording_merges(model: onnx.ModelProto, merges: list[list]) -> onnx.ModelProto:
    """onnxruntime's SymbolicShapeInference.infer_shapes with auto_merge, appending to `merges`
    the dims (sympy expressions) of every merge it makes."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    class Recording(SymbolicShapeInference):
        def _expr(self, dim):
            return self.symbolic_dims_.get(dim, dim) if isinstance(dim, str) else dim

        def _add_suggested_merge(self, symbols, apply=False):
            merges.append([self._expr(s) for s in symbols])
            return super()._add_suggested_merge(symbols, apply)

        def _merge_symbols(self, dims):
            merged = super()._merge_symbols(dims)
            if merged is not None and any(d != merged for d in dims):
                merges.append([self._expr(d) for d in dims])
            return merged

    inference = Recording(2**31 - 1, True, False, 0)  # as infer_shapes(auto_merge=True) builds it
    inference._preprocess(model)
    done = False
    while inference.run_:
        done = inference._infer_impl()
    inference._update_output_from_vi()
    if not done:
        raise RuntimeError("incomplete symbolic shape inference")
    return inference.out_mp_


def _forced_equal(dims: list) -> bool:
    """True for dims t and Min(K, t) (integer K >= 2) of one symbol t: equal wherever they broadcast validly."""
    import sympy

    try:
        exprs = [sympy.sympify(d) for d in dims]
    except (sympy.SympifyError, TypeError):
        return False
    symbols = {s for e in exprs for s in e.free_symbols}
    if len(symbols) != 1:
        return False
    (t,) = symbols

    def clamp(e) -> bool:
        if e == t:
            return True
        bounds = [a for a in e.args if a != t] if isinstance(e, sympy.Min) and t in e.args else []
        return len(bounds) == 1 and bounds[0].is_Integer and bounds[0] >= 2

    return all(clamp(e) for e in exprs)


def _symbolic_dims(graph: gs.Graph, infer, fallback: bool = True) -> dict[str, list[int | str]]:
    """Dims from `infer` (a model -> inferred model function) on the graph's weight-free export;
    with `fallback`, onnx's own inference where it fails."""
    model = export_graph(graph, weights=False, large_as_inputs=True)
    del model.graph.value_info[:]
    inferred = None
    with (
        tempfile.TemporaryDirectory(prefix="trtforge-symshape-") as scratch,
        contextlib.chdir(scratch),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        try:
            inferred = infer(model)
        except Exception:  # best effort: onnx's own inference below never merges dims
            if not fallback:
                raise
            inferred = None
        if inferred is None:
            if not fallback:
                raise RuntimeError("symbolic shape inference gave nothing")
            try:
                inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
            except Exception:  # no dims at all: nothing gets proved
                return {}
    dims: dict[str, list[int | str]] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if info.type.tensor_type.HasField("shape"):
            dims[info.name] = [
                int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or f"?{info.name}:{i}")
                for i, d in enumerate(info.type.tensor_type.shape.dim)
            ]
    return dims
