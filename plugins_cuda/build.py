"""nvcc builds of every plugins_cuda/<op>/kernel.cu for the target GPUs, warnings as errors.

    python -m plugins_cuda.build                 # every kernel, every target this nvcc knows
    python -m plugins_cuda.build --per-target    # one nvcc run per target, timed (slower)
    python -m plugins_cuda.build --ptx compute_80 -o build/ptx   # PTX for the TensorRT AOT plugins

One nvcc invocation per kernel file compiles all targets (-gencode each, SASS) plus
compute_80 PTX for GPUs newer than the list; host and device warnings are errors.
Targets: Ampere sm_80/sm_86, Jetson Orin sm_87, Ada sm_89, Hopper sm_90, Jetson Thor
sm_110 (when this nvcc knows it; CUDA 13 renamed Thor from sm_101), Blackwell
GeForce/RTX PRO sm_120 and DGX Spark sm_121.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
INCLUDE = ROOT / "include"
TARGETS = ["sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_110", "sm_120", "sm_121"]
PTX_ARCH = "compute_80"  # the lowest target: the driver JIT-compiles it for anything newer
FLAGS = [
    "-std=c++17",
    "-O3",
    "--Werror",
    "all-warnings",
    "-Xcompiler",
    "-Wall,-Wextra,-Werror",
    f"-I{INCLUDE}",
]


@dataclass
class BuildResult:
    source: Path
    targets: list[str]
    output: Path
    seconds: float


def nvcc_path() -> str | None:
    """nvcc on PATH, else $CUDA_HOME/bin/nvcc, else None."""
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidate = Path(home) / "bin" / "nvcc"
    return str(candidate) if candidate.exists() else None


def kernel_sources() -> list[Path]:
    return sorted(ROOT.glob("*/kernel.cu"))


def supported_targets(nvcc: str) -> tuple[list[str], list[str]]:
    """(targets of TARGETS this nvcc compiles for, targets it does not know)."""
    listed = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout
    known = {f"sm_{m}" for m in re.findall(r"compute_(\d+)", listed)}
    return [t for t in TARGETS if t in known], [t for t in TARGETS if t not in known]


def gencode_flags(targets: list[str], with_ptx: bool = True) -> list[str]:
    flags = []
    for target in targets:
        flags += ["-gencode", f"arch=compute_{target[3:]},code={target}"]
    if with_ptx:
        flags += ["-gencode", f"arch={PTX_ARCH},code={PTX_ARCH}"]
    return flags


def _run(cmd: list[str], source: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source.relative_to(ROOT.parent)}:\n{proc.stderr or proc.stdout}")
    return seconds


def compile_object(source: Path, targets: list[str], out_dir: Path, nvcc: str | None = None) -> BuildResult:
    """Compile one kernel file for all `targets` in one nvcc run (an object with a fat binary)."""
    nvcc = nvcc or nvcc_path()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (PATH, $CUDA_HOME/bin)")
    out = Path(out_dir) / f"{source.parent.name}.o"
    threads = str(max(1, min(len(targets) + 1, os.cpu_count() or 1)))
    cmd = [nvcc, "-c", str(source), "-o", str(out), "--threads", threads, *FLAGS, *gencode_flags(targets)]
    return BuildResult(source, list(targets), out, _run(cmd, source))


def compile_ptx(source: Path, out_dir: Path, arch: str = PTX_ARCH, nvcc: str | None = None) -> Path:
    """PTX for TensorRT's ahead-of-time Python plugins (they take PTX, embedded in the engine)."""
    nvcc = nvcc or nvcc_path()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (PATH, $CUDA_HOME/bin)")
    out = Path(out_dir) / f"{source.parent.name}.{arch}.ptx"
    _run([nvcc, "-ptx", str(source), "-o", str(out), f"-arch={arch}", *FLAGS], source)
    return out


def build_all(out_dir: Path, targets: list[str] | None = None, per_target: bool = False) -> list[BuildResult]:
    nvcc = nvcc_path()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (PATH, $CUDA_HOME/bin)")
    targets = targets or supported_targets(nvcc)[0]
    results = []
    for source in kernel_sources():
        if per_target:
            for target in targets:
                sub = Path(out_dir) / target
                sub.mkdir(parents=True, exist_ok=True)
                cmd_targets = [target]
                out = sub / f"{source.parent.name}.o"
                cmd = [nvcc, "-c", str(source), "-o", str(out), *FLAGS, *gencode_flags(cmd_targets, with_ptx=False)]
                results.append(BuildResult(source, cmd_targets, out, _run(cmd, source)))
        else:
            results.append(compile_object(source, targets, out_dir, nvcc))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--out", default=None, help="output folder (default: a temporary one)")
    parser.add_argument("--targets", nargs="*", help=f"subset of {' '.join(TARGETS)}")
    parser.add_argument("--per-target", action="store_true", help="one nvcc run per target, each timed")
    parser.add_argument("--ptx", metavar="ARCH", help="write PTX for ARCH (e.g. compute_80) instead")
    args = parser.parse_args(argv)
    nvcc = nvcc_path()
    if nvcc is None:
        print("nvcc not found (PATH, $CUDA_HOME/bin): nothing built")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        if args.ptx:
            for source in kernel_sources():
                print(compile_ptx(source, out, args.ptx, nvcc))
            return 0
        supported, missing = supported_targets(nvcc)
        if missing:
            print(f"this nvcc does not know {', '.join(missing)}: skipped")
        for result in build_all(out, args.targets or supported, args.per_target):
            name = result.source.relative_to(ROOT.parent)
            print(f"{name}: {','.join(result.targets)} in {result.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
