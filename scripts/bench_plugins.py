"""Benchmark the plugins_cuda kernels against torch on a CUDA GPU (writes JSON).

    python scripts/bench_plugins.py --out bench_plugins.json [--quick]

Per op and shape: max error vs the torch reference, kernel seconds, torch seconds
(GroupQuantMatMul: fp16 matmul with the weights dequantized beforehand, i.e. the
torch fast path at the same precision, run without bias (null bias pointer) and with a
bias [N] (torch: F.linear with bias); GatedLinearAttention: the reference recurrence), and achieved memory bandwidth as a fraction of the GPU's peak.
Output: {"results": [{"op", "shape", "gpu", "max_err", "seconds", "torch_seconds",
"bandwidth_frac", ...}], ...}. Kernels are compiled with nvcc for this GPU
(plugins_cuda/build.py flags) and launched through CuPy; torch supplies the
references. Without a GPU the script says so and exits 0 (this is what CI sees).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from converter.core.gpu import gpu_status  # noqa: E402

# Peak DRAM bandwidth (bytes/s) by GPU name, for when the driver does not report clocks.
PEAK_BANDWIDTH = {"H100 80GB HBM3": 3.35e12, "H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "L4": 3.0e11}


def _peak_bandwidth(cp, name: str) -> float | None:
    try:
        rt = cp.cuda.runtime
        clock_khz = rt.deviceGetAttribute(rt.cudaDevAttrMemoryClockRate, 0)
        bus_bits = rt.deviceGetAttribute(rt.cudaDevAttrGlobalMemoryBusWidth, 0)
        if clock_khz and bus_bits:
            return 2.0 * clock_khz * 1e3 * bus_bits / 8
    except Exception:  # attribute removed in newer CUDA: fall back to the table
        pass
    return next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)


def _time(fn, cp, repeats: int) -> float:
    fn()
    cp.cuda.Device().synchronize()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
    return sorted(times)[len(times) // 2]


def _module(cp, op: str, tmp: Path):
    """The op's kernels compiled for this GPU (nvcc cubin when nvcc exists, else NVRTC)."""
    from plugins_cuda import build

    source = build.ROOT / op / "kernel.cu"
    arch = f"sm_{cp.cuda.Device().compute_capability}"  # e.g. "90"
    nvcc = build.nvcc_path()
    if nvcc:
        out = tmp / f"{op}.cubin"
        build._run([nvcc, "-cubin", str(source), "-o", str(out), f"-arch={arch}", *build.FLAGS], source)
        return cp.RawModule(path=str(out))
    return cp.RawModule(code=source.read_text(), options=("-std=c++17", f"-I{build.INCLUDE}"), backend="nvrtc")


def bench_gqmm(cp, torch, mod, gpu: str, peak: float | None, quick: bool) -> list[dict]:
    from plugins_cuda.group_quant_matmul import reference as ref

    shapes = (
        [(1, 4096, 4096), (8, 4096, 4096)]
        if quick
        else [(1, 4096, 4096), (8, 4096, 4096), (1, 11008, 4096), (1, 4096, 11008), (512, 4096, 4096)]
    )
    results = []
    for bits in (4, 2):
        for m, n, k in shapes:
            g = 128
            w = torch.randn(n, k) * 0.02
            qw = ref.quantize(w, bits, g, scale_dtype=torch.float16)
            x = torch.randn(m, k, dtype=torch.float16)
            packed, scales, zeros = qw.packed(), qw.scales, qw.zeros
            dx, dq, ds, dz = (cp.asarray(t.numpy()) for t in (x, packed, scales, zeros))
            tx, tw = x.cuda(), qw.dequantized().to(torch.float16).cuda()
            path = "gemv" if m <= 8 else "gemm"
            kernel = mod.get_function(f"gqmm_{path}_w{bits}_f16")
            grid = ((n + 3) // 4, (m + 7) // 8) if path == "gemv" else ((n + 63) // 64, (m + 63) // 64)
            for bias in (None, torch.randn(n, dtype=torch.float16)):
                expected = ref.group_quant_matmul(x, packed, scales, zeros, bits, g, bias=bias).float()
                dbias = cp.uint64(0) if bias is None else cp.asarray(bias.numpy())  # null pointer: no bias
                dy = cp.empty((m, n), dtype=cp.float16)
                args = (dx, dq, ds, dz, dbias, cp.int32(m), cp.int32(n), cp.int32(k), cp.int32(g), dy)
                seconds = _time(lambda kernel=kernel, grid=grid, args=args: kernel(grid, (128,), args), cp, 50)
                err = float((torch.from_numpy(cp.asnumpy(dy)).float() - expected).abs().max())
                tb = None if bias is None else bias.cuda()
                torch_seconds = _time(lambda tx=tx, tw=tw, tb=tb: torch.nn.functional.linear(tx, tw, tb), cp, 50)
                moved = packed.numel() + scales.numel() * 2 + zeros.numel() + x.numel() * 2 + m * n * 2
                moved += 0 if bias is None else n * 2
                shape = {"M": m, "N": n, "K": k, "bits": bits, "group": g}
                timing = (seconds, torch_seconds, moved, peak)
                results.append(_row("GroupQuantMatMul", shape, path, gpu, err, *timing, bias=bias is not None))
                print(
                    f"GroupQuantMatMul w{bits} M={m} N={n} K={k} {path}{' +bias' if bias is not None else ''}: "
                    f"{seconds * 1e6:.1f} us (torch fp16 {torch_seconds * 1e6:.1f} us), max_err {err:.2e}"
                )
    return results


def _row(
    op: str,
    shape: dict,
    path: str,
    gpu: str,
    err: float,
    seconds: float,
    torch_seconds: float,
    moved: int,
    peak: float | None,
    **extra,
) -> dict:
    """One result in the benchmark's output contract; bandwidth as a fraction of the GPU's peak."""
    return {
        "op": op,
        "shape": shape,
        "path": path,
        **extra,
        "gpu": gpu,
        "max_err": err,
        "seconds": seconds,
        "torch_seconds": torch_seconds,
        "bandwidth_frac": (moved / seconds / peak) if peak else None,
    }


def bench_gla(cp, torch, mod, gpu: str, peak: float | None, quick: bool) -> list[dict]:
    from plugins_cuda.gated_linear_attention import reference as ref

    shapes = (
        [(1, 16, 1, 128, 128), (1, 16, 512, 128, 128)]
        if quick
        else [(1, 16, 1, 128, 128), (8, 16, 1, 128, 128), (1, 16, 512, 128, 128), (1, 16, 2048, 128, 128)]
    )
    results = []
    for b, h, t, dk, dv in shapes:
        q, k = torch.randn(b, h, t, dk) / dk**0.5, torch.randn(b, h, t, dk) / dk**0.5
        v, g = torch.randn(b, h, t, dv), torch.sigmoid(torch.randn(b, h, t, dk) + 3)
        s0 = torch.zeros(b, h, dk, dv)
        tensors = [x.to(torch.float16) for x in (q, k, v, g, s0)]
        exp_o, exp_s = ref.gated_linear_attention(*tensors)
        dev = [cp.asarray(x.numpy()) for x in tensors]
        do, ds = cp.empty((b, h, t, dv), cp.float16), cp.empty((b, h, dk, dv), cp.float16)
        path = "recurrent" if t == 1 else "chunked"
        kernel = mod.get_function(f"gla_{path}_f16")
        args = (*dev, cp.int32(b * h), cp.int32(t), cp.int32(dk), cp.int32(dv), do, ds)
        grid = (b * h, (dv + 31) // 32)
        if path == "recurrent":
            launch = lambda kernel=kernel, args=args, grid=grid: kernel(grid, (32, 4), args)  # noqa: E731
        else:
            smem = 4 * (3 * 16 * dk + 32 * dk + 32 * 16 + 16 * 16)
            launch = lambda kernel=kernel, args=args, grid=grid, smem=smem: kernel(grid, (128,), args, shared_mem=smem)  # noqa: E731
        seconds = _time(launch, cp, 20)
        err = max(
            float((torch.from_numpy(cp.asnumpy(do)).float() - exp_o.float()).abs().max()),
            float((torch.from_numpy(cp.asnumpy(ds)).float() - exp_s.float()).abs().max()),
        )
        cuda_in = [x.cuda() for x in tensors]
        torch_seconds = _time(lambda cuda_in=cuda_in: ref.gated_linear_attention(*cuda_in), cp, 3)
        moved = sum(x.numel() * 2 for x in tensors) + (b * h * t * dv + b * h * dk * dv) * 2
        shape = {"B": b, "H": h, "T": t, "Dk": dk, "Dv": dv}
        results.append(_row("GatedLinearAttention", shape, path, gpu, err, seconds, torch_seconds, moved, peak))
        print(
            f"GatedLinearAttention B={b} H={h} T={t} {path}: {seconds * 1e6:.1f} us "
            f"(torch recurrence {torch_seconds * 1e6:.1f} us), max_err {err:.2e}"
        )
    return results


def _skip(out: str, why: str) -> int:
    """Nothing measurable here: say why, on stdout and in the JSON (so a comparison sees it), and exit 0."""
    print(f"bench_plugins: {why}; nothing measured")
    Path(out).write_text(json.dumps({"gpu": None, "skipped": why, "results": []}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_plugins.json", help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="fewer shapes (under two minutes)")
    args = parser.parse_args(argv)
    ok, why = gpu_status()
    if not ok:
        return _skip(args.out, f"{why}: the kernels need a CUDA GPU")
    try:
        import cupy as cp
        import torch
    except ImportError as exc:
        return _skip(args.out, f"needs cupy and torch with CUDA on the GPU machine ({exc})")
    if not torch.cuda.is_available():
        return _skip(args.out, "torch has no CUDA (CPU wheel): install a CUDA build for the baselines")
    gpu = torch.cuda.get_device_name(0)
    peak = _peak_bandwidth(cp, gpu)
    with tempfile.TemporaryDirectory() as tmp:
        results = bench_gqmm(cp, torch, _module(cp, "group_quant_matmul", Path(tmp)), gpu, peak, args.quick)
        results += bench_gla(cp, torch, _module(cp, "gated_linear_attention", Path(tmp)), gpu, peak, args.quick)
    Path(args.out).write_text(json.dumps({"gpu": gpu, "peak_bandwidth": peak, "results": results}, indent=1))
    print(f"wrote {args.out} ({len(results)} results)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
