"""Weight-only quantized MatMul -> trtforge::GroupQuantMatMul with packed 4-/2-bit weights (exact).

Pattern (what the quantize passes emit for W4A16/W2A16):

    W = DequantizeLinear(q, scale, zero_point; axis, block_size=G)   q, scale, zero_point initializers
    y = MatMul(x, W)                 q [K, N], blocks along K (axis 0)
    y = MatMul(x, Transpose(W))      q [N, K] (torch Linear layout), blocks along K (axis 1), perm [1, 0]

Checks: within every group the codes span at most 16 levels (4-bit) or 4 (2-bit, chosen
when it fits, e.g. the int2 format stored as int4 values c + q); any of INT4/UINT4,
INT2/UINT2, INT8/UINT8 storage; G in {32, 64, 128} and K % G == 0;
the dequantized weight has no other reader; opset >= 15 (the function body's CastLike).
Rewrite: codes repacked as plugins_cuda/group_quant_matmul/packing.py says (each group
shifted to start at 0 with its zero point shifted alike, so q - z is unchanged), scales and zero points
transposed to [N, K/G], and the GroupQuantMatMul function attached to the model.
Exact: the function dequantizes to the same (q - z) · s as DequantizeLinear.

Second rule, bias: GroupQuantMatMul (new or already there) -> Add(y, b) or Add(b, y), b a
constant [N] initializer and the product read by nothing else (no graph output)  ==>
GroupQuantMatMul(..., bias=b). The function body adds it the same way (MatMul, then Add
in x's type); the kernel adds it to the fp32 sum before its single rounding.

Works on the ModelProto directly (a model-level pass): onnx-graphsurgeon cannot export
INT4/INT2 initializers, and every weight not rewritten must survive untouched. MatMuls
on float weights, Gemm and per-channel (non-blocked) DequantizeLinear are left alone;
8-bit weights are TensorRT's native INT8 path and are left alone with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from converter.core.external_data import to_array
from converter.core.model_io import opset_of
from passes.base import Pass, PassContext, PassResult
from plugins_cuda import DOMAIN
from plugins_cuda.group_quant_matmul import onnx as gqmm_onnx
from plugins_cuda.group_quant_matmul.packing import SUPPORTED_GROUPS, pack
from plugins_cuda.onnx_common import MIN_OPSET

CODE_TYPES = {
    TensorProto.UINT4: 4,
    TensorProto.INT4: 4,
    TensorProto.UINT2: 2,
    TensorProto.INT2: 2,
    TensorProto.UINT8: 8,
    TensorProto.INT8: 8,
}
SCALE_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16}


@dataclass
class _Match:
    matmul: onnx.NodeProto
    dq: onnx.NodeProto
    transpose: onnx.NodeProto | None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _repack_codes(q: np.ndarray, z: np.ndarray, group: int, storage_bits: int):
    """(bits, codes uint8 [N, K], zeros int32 [N, K/G]) with codes - zeros == q - z, narrowest first.

    Each group is shifted to start at code 0 (its zero point moves with it), so a group
    that uses only four consecutive levels packs as 2-bit whatever its offset: the
    decoupleQ-style W2 format stored as int4 values c + q packs to 2 bits.
    """
    n, k = q.shape
    groups = q.reshape(n, k // group, group)
    low = groups.min(axis=2)
    span = int((groups.max(axis=2) - low).max())
    zeros = z - low
    if zeros.min() < -128 or zeros.max() > 127:
        return None
    for bits in (2, 4) if storage_bits >= 4 else (2,):
        if span < (1 << bits):
            codes = (groups - low[:, :, None]).reshape(n, k)
            return bits, codes.astype(np.uint8), zeros
    return None


@dataclass
class GroupQuantMatMul(Pass):
    """DequantizeLinear(block-quantized 4/2-bit weights) -> MatMul (-> Add bias)  ==>  GroupQuantMatMul."""

    name = "group-quant-matmul"
    level = "model"  # gs cannot export INT4/INT2 initializers (module docstring)
    exact = True
    needs_plugins = (
        "GroupQuantMatMul pays off as full TensorRT's plugin; TensorRT-RTX has none and inlines its ONNX "
        "function into ordinary layers with the weights at fp16 size (MiniLM W4A16: 52.1 MB, against 34.4 MB "
        "for the blocked DequantizeLinear form the quantize pass writes)"
    )

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        result = PassResult()
        fused = self._fuse_matmuls(model, result)
        if self._fold_bias(model, result) or fused:
            gqmm_onnx.attach(model)  # the function for the nodes' arity (see plugins_cuda/group_quant_matmul/onnx.py)
            result.notes.append(f"for full TensorRT only: {self.needs_plugins}")
        return model, result

    def _fuse_matmuls(self, model: onnx.ModelProto, result: PassResult) -> bool:
        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        producers = {out: n for n in graph.node for out in n.output}
        readers: dict[str, int] = {}
        for n in graph.node:
            for name in n.input:
                readers[name] = readers.get(name, 0) + 1
        for out in graph.output:
            readers[out.name] = readers.get(out.name, 0) + 1

        matches = []
        for node in graph.node:
            if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
                continue
            src = producers.get(node.input[1])
            transpose = None
            if src is not None and src.op_type == "Transpose" and list(_attr(src, "perm", [])) == [1, 0]:
                transpose, src = src, producers.get(src.input[0])
            if src is None or src.op_type != "DequantizeLinear":
                continue
            matches.append(_Match(node, src, transpose))
        if not matches:
            return False
        opset = opset_of(model)
        if opset < MIN_OPSET:
            for m in matches:
                result.reject(m.matmul.name, f"opset {opset} < {MIN_OPSET}: run upgrade-opset first")
            return False

        replaced: dict[str, onnx.NodeProto] = {}  # MatMul name -> new node
        dropped: set[int] = set()
        new_inits: list[onnx.TensorProto] = []
        for m in matches:
            why = self._check(m, inits, readers)
            if isinstance(why, str):
                result.reject(m.matmul.name or m.dq.name, why)
                continue
            codes, scales, zeros, bits, group = why
            base = (m.dq.input[0] or m.matmul.name).replace("/", "_").strip("_") or "w"
            names = [f"{base}_packed{bits}", f"{base}_gscales", f"{base}_gzeros"]
            new_inits += [
                numpy_helper.from_array(pack(codes, bits), names[0]),
                numpy_helper.from_array(scales, names[1]),
                numpy_helper.from_array(zeros, names[2]),
            ]
            replaced[id(m.matmul)] = gqmm_onnx.make_node(
                [m.matmul.input[0], *names], m.matmul.output[0], bits, group, name=f"{m.matmul.name or base}_gqmm"
            )
            dropped.update({id(m.dq)} | ({id(m.transpose)} if m.transpose is not None else set()))
            result.count(f"matmul_w{bits}_g{group}", m.matmul.name)
        if not replaced:
            return False

        nodes = []
        for n in graph.node:
            if id(n) in dropped:
                continue
            nodes.append(replaced.get(id(n), n))
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(new_inits)
        used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        keep = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        return True

    def _fold_bias(self, model: onnx.ModelProto, result: PassResult) -> bool:
        """GroupQuantMatMul -> Add(constant [N])  ==>  GroupQuantMatMul with that bias."""
        graph = model.graph
        graph_inputs = {i.name for i in graph.input}  # an initializer that is also an input can be overridden
        inits = {t.name: t for t in graph.initializer if t.name not in graph_inputs}
        outputs = {o.name for o in graph.output}
        readers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for name in n.input:
                readers.setdefault(name, []).append(n)
        dropped: set[int] = set()
        for node in graph.node:
            if node.domain != DOMAIN or node.op_type != gqmm_onnx.OP or gqmm_onnx.node_bias(node):
                continue
            users = readers.get(node.output[0], [])
            adds = [u for u in users if u.op_type == "Add" and u.domain in ("", "ai.onnx")]
            if not adds:
                continue
            name = node.name or node.output[0]
            add = adds[0]
            bias = add.input[1] if add.input[0] == node.output[0] else add.input[0]
            qweight = inits.get(node.input[1])
            if len(users) != 1 or node.output[0] in outputs:
                result.reject(name, "bias Add: the product has other readers")
            elif bias == node.output[0] or bias not in inits:
                result.reject(name, "bias Add: the other operand is not an initializer (run fold first)")
            elif qweight is None or list(inits[bias].dims) != [qweight.dims[0]]:
                result.reject(name, f"bias Add: operand of shape {list(inits[bias].dims)} is not a [N] vector")
            else:
                node.input.append(bias)
                node.output[0] = add.output[0]
                dropped.add(id(add))
                result.count("bias_folded", name)
        if not dropped:
            return False
        kept = [n for n in graph.node if id(n) not in dropped]
        del graph.node[:]
        graph.node.extend(kept)
        return True

    def _check(self, m: _Match, inits, readers):
        dq = m.dq
        dq_out = dq.output[0]
        if readers.get(dq_out, 0) != 1 or (m.transpose is not None and readers.get(m.transpose.output[0], 0) != 1):
            return "the dequantized weight has other readers"
        names = [*dq.input, "", ""][:3]
        q_init, s_init = inits.get(names[0]), inits.get(names[1])
        z_init = inits.get(names[2]) if names[2] else None
        if q_init is None or s_init is None or (names[2] and z_init is None):
            return "DequantizeLinear operands are not initializers"
        if q_init.data_type not in CODE_TYPES:
            return f"weights of type {TensorProto.DataType.Name(q_init.data_type)} are not 2/4/8-bit integers"
        if s_init.data_type not in SCALE_TYPES:
            return "scales are not fp32/fp16/bf16"
        group = int(_attr(dq, "block_size", 0) or 0)
        if group == 0:
            return "DequantizeLinear is not block-wise (no block_size): per-channel/tensor weights stay"
        if group not in SUPPORTED_GROUPS:
            return f"block_size {group} not in {SUPPORTED_GROUPS}"
        q = to_array(q_init).astype(np.int32)
        if q.ndim != 2:
            return f"weight rank {q.ndim} != 2"
        axis = int(_attr(dq, "axis", 1)) % 2
        k_axis = 1 if m.transpose is not None else 0  # K is MatMul's reduction axis
        if axis != k_axis:
            return f"blocks run along axis {axis}, not the reduction axis {k_axis}"
        s = to_array(s_init)
        z = to_array(z_init).astype(np.int32) if z_init is not None else np.zeros(s.shape, np.int32)
        if m.transpose is None:  # [K, N] -> [N, K]
            q, s, z = q.T, s.T, z.T
        n, k = q.shape
        if k % group or s.shape != (n, k // group) or z.shape != s.shape:
            return f"K={k} is not a multiple of block_size {group} (or scale/zero shapes disagree)"
        choice = _repack_codes(q, z, group, CODE_TYPES[q_init.data_type])
        if choice is None:
            return "codes need more than 4 bits: 8-bit weights are TensorRT's native INT8 path"
        bits, codes, zeros = choice
        zeros = zeros.astype(s.dtype)  # integer-valued, exact in fp16/bf16 (|z| <= 128)
        return np.ascontiguousarray(codes), np.ascontiguousarray(s), np.ascontiguousarray(zeros), bits, group
