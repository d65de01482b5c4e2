"""GatedLinearAttention: o_t = q_tᵀ S_t, S_t = diag(g_t) S_{t-1} + k_t v_tᵀ, with explicit state.

Files: kernel.cu (CUDA chunked-parallel prefill + recurrent decode), reference.py
(torch recurrence and parallel forms), onnx.py (the ONNX local function), plugin.py
(full-TensorRT AOT plugin).
"""
