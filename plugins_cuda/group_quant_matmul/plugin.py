"""Full-TensorRT plugin for trtforge::GroupQuantMatMul (ahead-of-time: no Python at run time).

NOT RUN HERE: this machine has no GPU and full TensorRT cannot be installed; nothing in
CI imports this module. It is written against TensorRT 10's `tensorrt.plugin` API
(register / autotune / aot_impl, which embeds the PTX in the engine) and is loaded by
plugins_cuda/trt_plugins.py when `import tensorrt.plugin` works; when it does not, the
`tensorrt` backend parses the ONNX function body instead (as TensorRT-RTX does).

Two tactics, timed by the builder: 1 = gqmm_gemv_* (decode, M <= 8), 2 = gqmm_gemm_*.
Both are correct for any M. The plugin has five inputs, bias included: TensorRT's Python
plugins declare a fixed input list (no optional inputs) and AOT kernels receive exactly
the plugin's inputs, so a node without a bias must be given a zero bias before the
parser maps it here: `group_quant_matmul.onnx.attach(model, bias_everywhere=True)` (x · Wᵀ
+ 0 is exact and costs one [N] vector per layer), which trt_plugins.for_plugins has to
call before tagging the nodes. The kernels also accept a null bias (CuPy callers).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

PLUGIN_ID = "trtforge::GroupQuantMatMul"
TACTIC_GEMV, TACTIC_GEMM = 1, 2


@functools.cache
def ptx() -> str:
    from plugins_cuda.build import compile_ptx

    source = Path(__file__).with_name("kernel.cu")
    with tempfile.TemporaryDirectory() as tmp:
        return compile_ptx(source, Path(tmp)).read_text()


@functools.cache
def register() -> None:
    import tensorrt as trt  # lazily: only on machines with full TensorRT
    import tensorrt.plugin as trtp

    suffix = {trt.float32: "f32", trt.float16: "f16", trt.bfloat16: "bf16"}
    code = ptx()  # fail here (no nvcc) rather than in the builder

    @trtp.register(PLUGIN_ID)
    def _desc(
        x: trtp.TensorDesc,
        qweight: trtp.TensorDesc,
        scales: trtp.TensorDesc,
        zeros: trtp.TensorDesc,
        bias: trtp.TensorDesc,
        bits: int,
        group_size: int,
    ) -> trtp.TensorDesc:
        rank = len(x.shape_expr)
        dims = [x.shape_expr[i] for i in range(rank - 1)] + [qweight.shape_expr[0]]
        return trtp.from_shape_expr(dims, dtype=x.dtype)

    @trtp.autotune(PLUGIN_ID)
    def _tune(x, qweight, scales, zeros, bias, bits: int, group_size: int, outputs):
        # x, qweight, scales, zeros, bias, y
        types = "FP16|BF16|FP32, UINT8|UINT8|UINT8, FP16|BF16|FP32, FP16|BF16|FP32, FP16|BF16|FP32, FP16|BF16|FP32"
        return [trtp.AutoTuneCombination(types, "LINEAR", [TACTIC_GEMV, TACTIC_GEMM])]

    @trtp.aot_impl(PLUGIN_ID)
    def _aot(x, qweight, scales, zeros, bias, bits: int, group_size: int, outputs, tactic: int):
        rank = len(x.shape_expr)
        k = x.shape_expr[rank - 1]
        m = x.shape_expr.numel() // k
        n = qweight.shape_expr[0]
        launch = trtp.KernelLaunchParams()
        launch.block_x = 128
        if tactic == TACTIC_GEMV:
            name = f"gqmm_gemv_w{bits}_{suffix[x.dtype]}"
            launch.grid_x, launch.grid_y = trtp.cdiv(n, 4), trtp.cdiv(m, 8)
        else:
            name = f"gqmm_gemm_w{bits}_{suffix[x.dtype]}"
            launch.grid_x, launch.grid_y = trtp.cdiv(n, 64), trtp.cdiv(m, 64)
        extra = trtp.SymIntExprs(4)  # kernel args: x, qweight, scales, zeros, bias, M, N, K, G, y
        extra[0], extra[1], extra[2], extra[3] = (trtp.SymInt32(e) for e in (m, n, k, group_size))
        return name, code, launch, extra
