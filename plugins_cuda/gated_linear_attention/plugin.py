"""Full-TensorRT plugin for trtforge::GatedLinearAttention (ahead-of-time: no Python at run time).

NOT RUN HERE: this machine has no GPU and full TensorRT cannot be installed; nothing in
CI imports this module. Written against TensorRT 10's `tensorrt.plugin` API and loaded
by plugins_cuda/trt_plugins.py when `import tensorrt.plugin` works; otherwise the
`tensorrt` backend inlines the ONNX function body (as TensorRT-RTX does).

Tactics timed by the builder: 1 = gla_recurrent_* (decode, T = 1), 2 = gla_chunked_*
(prefill); both are correct for any T. Needs Dk <= 128 (kernel.cu).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

PLUGIN_ID = "trtforge::GatedLinearAttention"
TACTIC_RECURRENT, TACTIC_CHUNKED = 1, 2
CHUNK, COLS = 16, 32  # kernel.cu's kChunk and kCols


@functools.cache
def ptx() -> str:
    from plugins_cuda.build import compile_ptx

    source = Path(__file__).with_name("kernel.cu")
    with tempfile.TemporaryDirectory() as tmp:
        return compile_ptx(source, Path(tmp)).read_text()


def chunked_smem_bytes(dk: int) -> int:
    """Dynamic shared memory of gla_chunked_* (kernel.cu's formula)."""
    return 4 * (3 * CHUNK * dk + COLS * dk + COLS * CHUNK + CHUNK * CHUNK)


@functools.cache
def register() -> None:
    import tensorrt as trt  # lazily: only on machines with full TensorRT
    import tensorrt.plugin as trtp

    suffix = {trt.float32: "f32", trt.float16: "f16", trt.bfloat16: "bf16"}
    code = ptx()

    @trtp.register(PLUGIN_ID)
    def _desc(
        q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, g: trtp.TensorDesc, state: trtp.TensorDesc
    ) -> tuple[trtp.TensorDesc, trtp.TensorDesc]:
        return v.like(), state.like()

    @trtp.autotune(PLUGIN_ID)
    def _tune(q, k, v, g, state, outputs):
        types = ", ".join(["FP16|BF16|FP32"] * 7)
        return [trtp.AutoTuneCombination(types, "LINEAR", [TACTIC_RECURRENT, TACTIC_CHUNKED])]

    @trtp.aot_impl(PLUGIN_ID)
    def _aot(q, k, v, g, state, outputs, tactic: int):
        b, h, t, dk = (q.shape_expr[i] for i in range(4))
        dv = v.shape_expr[3]
        launch = trtp.KernelLaunchParams()
        launch.grid_x, launch.grid_y = b * h, trtp.cdiv(dv, COLS)
        if tactic == TACTIC_RECURRENT:
            name = f"gla_recurrent_{suffix[q.dtype]}"
            launch.block_x, launch.block_y = 32, 4
        else:
            name = f"gla_chunked_{suffix[q.dtype]}"
            launch.block_x = 128
            launch.shared_mem = 4 * (3 * CHUNK * dk + COLS * dk + COLS * CHUNK + CHUNK * CHUNK)
        extra = trtp.SymIntExprs(4)  # kernel args: q, k, v, g, s0, BH, T, Dk, Dv, o, s_out
        extra[0], extra[1], extra[2], extra[3] = (trtp.SymInt32(e) for e in (b * h, t, dk, dv))
        return name, code, launch, extra
