"""What a 4-bit weight costs in a TensorRT-RTX engine besides its bytes: kernel code per weight shape.

#17 asks that a W4A16 engine keep at least 75 % of the weight bytes the ONNX saves. MiniLM
(98.9 %) and a Llama-shaped 25M-parameter decoder (99.1 %) do; the 1.3M-parameter decoder-lm
demo does not (55-70 %). This measures why, on TensorRT-RTX engines built on this CPU (sm89):

1. `stacks`: chains of MatMuls (fp16 activations [batch, 64, K]) with one or two distinct
   weight shapes (K, N), 4 or 8 layers, fp16 weights against int4 `DequantizeLinear`
   (block 128, fp16 scales). The engine bytes beyond the weights' own bytes ("code") are
   what each form costs in kernels; `int4_extra_code_kb` is what int4 adds.
2. `decoder_lm`: the demo in W4A16 (round-to-nearest, block 128), all its weight shapes and
   each subset of them quantized (the rest fp16): the share of the ONNX saving its engine
   keeps, so the best choice of layers is measured, not guessed.

    python scripts/bench_int4_engine.py --out bench_int4_engine.json   # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from bench_quantize_wo import weight_bytes  # beside this script
from onnx import TensorProto, helper, numpy_helper

TARGET = "sm89"


def matmul_stack(dims: list[int], int4: bool, block: int = 128, seed: int = 0) -> onnx.ModelProto:
    """x[b, 64, dims[0]] through MatMuls dims[i] -> dims[i+1]; int4: weights as blocked DequantizeLinear."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i, (k, n) in enumerate(itertools.pairwise(dims)):
        w = rng.standard_normal((k, n)).astype(np.float32)
        if int4:
            scale = np.abs(w).reshape(k // block, block, n).max(1) / 7
            q = np.clip(np.round(w / np.repeat(scale, block, 0)), -8, 7).astype(np.int8)
            inits += [
                helper.make_tensor(f"q{i}", TensorProto.INT4, q.shape, q.flatten().tolist()),
                numpy_helper.from_array(scale.astype(np.float16), f"s{i}"),
            ]
            nodes.append(helper.make_node("DequantizeLinear", [f"q{i}", f"s{i}"], [f"w{i}"], axis=0, block_size=block))
        else:
            inits.append(numpy_helper.from_array(w.astype(np.float16), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"]))
        x = f"y{i}"
    graph = helper.make_graph(
        nodes,
        "stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 64, dims[0]])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT16, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def engine_bytes(path: Path, profiles) -> int:
    from converter.backends import BuildConfig, get_backend

    built = get_backend("tensorrt-rtx").build(
        path, path.with_suffix(".engine"), BuildConfig(profiles=profiles, target_gpus=[TARGET])
    )
    return built.sidecar["engine_bytes"]


def stacks(work: Path) -> list[dict]:
    """Engine bytes of fp16 and int4 MatMul stacks: kernel code per distinct int4 weight shape."""
    from converter.backends import ShapeProfile

    rows = []
    cases = [(w, [w] * (layers + 1)) for w in (256, 512, 1024) for layers in (4, 8)]
    cases += [(w, [w, 3 * w] * 4 + [w]) for w in (256, 512)]  # two shapes: (w, 3w) and (3w, w)
    for width, dims in cases:
        row = {"dims": f"{dims[0]}->{'->'.join(map(str, dims[1:3]))}...", "layers": len(dims) - 1}
        row["distinct_shapes"] = len(set(itertools.pairwise(dims)))
        profile = {"x": ShapeProfile((1, 64, dims[0]), (4, 64, dims[0]), (8, 64, dims[0]))}
        for form in ("fp16", "int4"):
            path = work / f"stack_{width}_{len(dims)}_{row['distinct_shapes']}_{form}.onnx"
            onnx.save(matmul_stack(dims, form == "int4"), path)
            size, weights = engine_bytes(path, profile), weight_bytes(path)
            row[f"{form}_engine_kb"] = round(size / 1e3, 1)
            row[f"{form}_code_kb"] = round((size - weights) / 1e3, 1)  # engine bytes beyond the weights
        row["int4_extra_code_kb"] = round(row["int4_code_kb"] - row["fp16_code_kb"], 1)
        saved = row["fp16_engine_kb"] - row["int4_engine_kb"]
        onnx_saved = (row["fp16_engine_kb"] - row["fp16_code_kb"]) - (row["int4_engine_kb"] - row["int4_code_kb"])
        row["engine_saving_share"] = round(saved / onnx_saved, 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _revert(model: onnx.ModelProto, keep: set[tuple[int, int]]) -> onnx.ModelProto:
    """The W4A16 graph with every int4 weight whose shape is not in `keep` back in float (dequantized)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        weight = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if weight is not None and tuple(weight.dims) not in keep:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            codes = numpy_helper.to_array(weight).astype(np.float32)
            scale = np.repeat(
                numpy_helper.to_array(inits[node.input[1]]).astype(np.float32), attrs["block_size"], attrs["axis"]
            )
            model.graph.initializer.append(numpy_helper.from_array(codes * scale[: codes.shape[0]], node.output[0]))
            continue
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def decoder_lm(work: Path) -> list[dict]:
    """The demo's W4A16 engine with every subset of its int4 weight shapes: the best share it can keep."""
    from converter import api
    from converter.backends import ShapeProfile

    fp32, w4 = work / "lm.onnx", work / "lm.w4.onnx"
    api.export("decoder-lm", fp32)
    api.quantize(fp32, w4, mode="int4-wo", block_size=128, algorithm="rtn")
    quantized = onnx.load(str(w4))
    inits = {t.name: t for t in quantized.graph.initializer}
    shapes = sorted({tuple(inits[n.input[0]].dims) for n in quantized.graph.node if n.op_type == "DequantizeLinear"})
    profile = {"input_ids": ShapeProfile((1, 64), (8, 64), (32, 64))}
    half = work / "lm_fp16.onnx"
    api.optimize(fp32, half, passes=[], precision="fp16")
    base_engine, base_weights = engine_bytes(half, profile), weight_bytes(half)
    rows = [
        {
            "int4_shapes": "none (fp16)",
            "engine_mb": round(base_engine / 1e6, 3),
            "onnx_weight_mb": round(base_weights / 1e6, 3),
        }
    ]
    for size in range(1, len(shapes) + 1):
        for keep in itertools.combinations(shapes, size):
            path = work / f"lm_{'_'.join(f'{k}x{n}' for k, n in keep)}.onnx"
            onnx.save(_revert(quantized, set(keep)), path)
            api.optimize(path, path.with_suffix(".fp16.onnx"), passes=[], precision="fp16")
            built, weights = (
                engine_bytes(path.with_suffix(".fp16.onnx"), profile),
                weight_bytes(path.with_suffix(".fp16.onnx")),
            )
            row = {
                "int4_shapes": ", ".join(f"{k}x{n}" for k, n in keep),
                "engine_mb": round(built / 1e6, 3),
                "onnx_weight_mb": round(weights / 1e6, 3),
                "engine_saving_share": round((base_engine - built) / (base_weights - weights), 3),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_int4_engine.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-int4-") as tmp:
        result = {"target": TARGET, "stacks": stacks(Path(tmp)), "decoder_lm": decoder_lm(Path(tmp))}
    import tensorrt_rtx

    result["environment"] = {
        "tensorrt_rtx": tensorrt_rtx.__version__,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    best = max((r for r in result["decoder_lm"] if "engine_saving_share" in r), key=lambda r: r["engine_saving_share"])
    print(f"decoder-lm: the best choice of int4 shapes ({best['int4_shapes']}) keeps {best['engine_saving_share']:.0%}")


if __name__ == "__main__":
    main()
