"""quantize-embeddings: embedding tables (Gather data) stored in int8 or int4 behind a DequantizeLinear.

The weight-only modes quantize MatMul/Gemm weights; an embedding table is read by a
Gather and stays float, and in an encoder or a small LLM it is the largest weight
(MiniLM: 23 MB of 45 MB in fp16; a 1B Llama with a 128K vocabulary: a fifth of the
model). TensorRT-RTX stores the quantized table as is when a DequantizeLinear feeds the
Gather (measured, sm89: a 30522x384 table 23.6 MB in fp16, 11.9 MB int8, 6.2 MB int4
block 128), and onnxruntime runs the same graph, so it verifies like any other stage.

- int8: one scale per row (per token), amax / 127, DequantizeLinear(axis=0);
- int4: blocks of `block_size` along the row (the hidden axis), amax / 7, symmetric
  (TensorRT-RTX refuses int4 zero points), DequantizeLinear(axis=1, block_size), opset 21.
A float16 table gets float16 scales, so the Gather still yields float16.

Only a table every reader of which is a Gather on axis 0 is quantized: a table shared with
a MatMul (tied input and output embeddings) would otherwise be stored twice. Tables under
`min_elements` (token-type embeddings, 2 x H) are left alone: they save nothing. The report
gives each table's relative RMS reconstruction error; lossy (`exact = False`), so the
verifier measures the cost on the model's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatch

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs

from converter.core.model_io import opset_of
from passes.base import Pass, PassContext, PassResult
from passes.fold.upgrade_opset import UpgradeOpset
from passes.model_utils import graph_to_model, import_graph, release_values
from passes.quant.formats import block_int4, per_channel_int8, weight_dq

BLOCK_OPSET = 21  # DequantizeLinear with block_size (int4)
PER_ROW_OPSET = 13  # DequantizeLinear with axis
ROWS = 8192  # table rows quantized at a time


def _table_readers(table: gs.Constant) -> str | None:
    """None when every reader of `table` is a Gather on axis 0 reading it as data; else why not."""
    for reader in table.outputs:
        if reader.op != "Gather" or reader.inputs[0] is not table or reader.attrs.get("axis", 0) != 0:
            return f"also read by {reader.op} {reader.name!r} (tied weights would be stored twice)"
    return None


def quantize_table(table: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray, int | None, float]:
    """(codes, scale, block_size or None, relative RMS error) of a [V, H] table, a slice of rows at a
    time (a 128K-token table is never copied whole in float32); scales in the table's float type."""
    dtype = np.float16 if table.dtype == np.float16 else np.float32
    vocab, hidden = table.shape
    codes = np.empty((vocab, hidden), np.int8 if bits == 8 else ml_dtypes.int4)
    scale = np.empty((vocab,) if bits == 8 else (vocab, hidden // block), dtype)
    error = norm = 0.0
    for start in range(0, vocab, ROWS):
        rows = np.asarray(table[start : start + ROWS], np.float32)
        if bits == 8:
            q, s = per_channel_int8(rows, axis=0, scale_dtype=dtype)
            steps = s.astype(np.float32)[:, None]
        else:
            q, s = block_int4(rows.T, block, scale_dtype=dtype)  # blocks along the row (H)
            q, s = q.T, s.T
            steps = np.repeat(s.astype(np.float32), block, axis=1)
        codes[start : start + len(rows)], scale[start : start + len(rows)] = q, s
        error += float(np.sum(np.square(rows - q.astype(np.float32) * steps)))
        norm += float(np.sum(np.square(rows)))
    return codes, scale, None if bits == 8 else block, (error / norm) ** 0.5 if norm else 0.0


@dataclass
class QuantizeEmbeddings(Pass):
    """Embedding tables (Gather data) as int8 per row or int4 per block (module docstring)."""

    name = "quantize-embeddings"
    level = "model"  # int4 needs opset 21 (the model's opset moves)
    bits: int = 8
    block_size: int = 128
    min_elements: int = 1 << 16
    exclude_names: list[str] = field(default_factory=list)  # fnmatch patterns on the table's name

    def __post_init__(self) -> None:
        if self.bits not in (8, 4):
            raise ValueError(f"bits {self.bits}: 8 (per row) or 4 (per block)")
        if self.block_size not in (16, 32, 64, 128, 256):
            raise ValueError(f"block_size {self.block_size} not in 16, 32, 64, 128, 256")
        if self.min_elements < 0:
            raise ValueError(f"min_elements must be >= 0, got {self.min_elements}")

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        result = PassResult()
        graph = import_graph(model)
        tables = self.tables(graph, result)
        if not tables:
            result.notes.append("no embedding table to quantize")
            return model, result
        needed = BLOCK_OPSET if self.bits == 4 else PER_ROW_OPSET
        if opset_of(model) < needed:
            model, upgrade = UpgradeOpset(target=needed).run_model(model, ctx)
            result.opset = upgrade.opset
            result.count("opset_upgraded")
            graph = import_graph(model)
            tables = self.tables(graph)
        report = []
        for table in tables:
            shape = list(table.shape)
            codes, scale, block, error = quantize_table(np.asarray(table.values), self.bits, self.block_size)
            release_values(table)
            node, out = weight_dq(table.name, codes, scale, 0 if block is None else 1, block)
            for reader in list(table.outputs):
                reader.inputs[0] = out
            graph.nodes.append(node)
            result.count("tables_quantized", node.name)
            report.append(
                {
                    "table": table.name,
                    "shape": shape,
                    "bits": self.bits,
                    "block": block,
                    "error": round(error, 6),
                }
            )
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        result.details["embeddings"] = report
        return graph_to_model(graph, model), result

    def tables(self, graph: gs.Graph, result: PassResult | None = None) -> list[gs.Constant]:
        """The tables this pass would quantize: float 2-D initializers read only by Gathers (the others
        recorded in `result` with the reason)."""
        result = result if result is not None else PassResult()
        found: dict[str, gs.Constant] = {}
        for node in graph.nodes:
            table = node.inputs[0] if node.op == "Gather" and node.inputs else None
            if not isinstance(table, gs.Constant) or table.name in found:
                continue
            why = self._refusal(table)
            if why:
                result.reject(node.name, f"{table.name}: {why}")
            else:
                found[table.name] = table
        return list(found.values())

    def _refusal(self, table: gs.Constant) -> str | None:
        dtype, shape = np.dtype(table.dtype), list(table.shape)
        if dtype not in (np.float32, np.float16) or len(shape) != 2:
            return f"not a 2-D float table ({dtype.name} {shape})"
        if shape[0] * shape[1] < self.min_elements:
            return f"{shape[0]}x{shape[1]} is under min_elements {self.min_elements}"
        if self.bits == 4 and shape[1] % self.block_size:
            return f"row length {shape[1]} is not a multiple of block_size {self.block_size}"
        if any(fnmatch(table.name, pattern) for pattern in self.exclude_names):
            return "excluded by name"
        return _table_readers(table)
