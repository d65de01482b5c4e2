"""nvcc builds every plugins_cuda kernel for every target, warnings as errors; the bench script without a GPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from plugins_cuda import build

NVCC = build.nvcc_path()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not installed (PATH, $CUDA_HOME/bin): kernels not compiled")


@needs_nvcc
def test_this_nvcc_knows_the_required_targets():
    supported, missing = build.supported_targets(NVCC)
    assert set(missing) <= {"sm_110"}, missing  # Jetson Thor only with CUDA 13
    assert {"sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_120", "sm_121"} <= set(supported)


@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize("source", build.kernel_sources(), ids=lambda p: p.parent.name)
def test_kernel_compiles_for_every_target(source, tmp_path):
    supported, _ = build.supported_targets(NVCC)
    result = build.compile_object(source, supported, tmp_path)
    assert result.output.stat().st_size > 0
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump:  # one cubin per target in the fat binary
        listing = subprocess.run([cuobjdump, "--list-elf", str(result.output)], capture_output=True, text=True)
        for target in supported:
            assert f".{target}." in listing.stdout, (target, listing.stdout)


@needs_nvcc
@pytest.mark.slow
def test_kernel_ptx_for_the_aot_plugins(tmp_path):
    names = {
        "group_quant_matmul": ["gqmm_gemv_w4_f16", "gqmm_gemm_w2_bf16", "gqmm_gemm_w4_f32"],
        "gated_linear_attention": ["gla_recurrent_f16", "gla_chunked_bf16", "gla_chunked_f32"],
    }
    for source in build.kernel_sources():
        ptx = build.compile_ptx(source, tmp_path).read_text()
        for name in names[source.parent.name]:
            assert f".entry {name}(" in ptx


def test_bench_script_without_gpu_says_so_and_exits_0(tmp_path):
    from converter.core.gpu import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present: the benchmark would run")
    proc = subprocess.run(
        [sys.executable, "scripts/bench_plugins.py", "--quick", "--out", str(tmp_path / "b.json")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "no GPU" in proc.stdout
    written = json.loads((tmp_path / "b.json").read_text())
    assert written["results"] == [] and "no GPU" in written["skipped"]
