"""Deployment targets by name: the GPUs behind them, and which TensorRT can build for them from here.

TensorRT-RTX (`tensorrt-rtx-cu13`) builds ahead of time, on a machine without a GPU, for
the compute capabilities its `ComputeCapability` enum lists (1.7: sm75, sm80, sm86, sm89,
sm120, sm121). Hopper and the Jetson modules are not among them: their engines need full
TensorRT on the device or on a host with the same GPU (Jetson: TensorRT 10.x from JetPack).
`doctor` reports which of these are reachable from the machine it runs on.

FIRST_PARSED_IN records, for the ops trtforge's opset-23 fusions emit, the first TensorRT
release whose ONNX parser takes them (`doctor` lists it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    compute: tuple[str, ...]  # compute capabilities (sm86 = 8.6)
    gpus: str  # what ships with it
    aot_rtx: bool  # TensorRT-RTX builds it ahead of time, without the GPU
    needs: str = ""  # what builds it otherwise


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("turing", ("sm75",), "GeForce RTX 20, Quadro RTX, T4", True),
        Target("ampere", ("sm80", "sm86"), "A100 (sm80); GeForce RTX 30, RTX A-series, A10 (sm86)", True),
        Target("ada", ("sm89",), "GeForce RTX 40, RTX Ada, L4, L40", True),
        Target("blackwell", ("sm120",), "GeForce RTX 50, RTX PRO Blackwell", True),
        Target("spark", ("sm121",), "DGX Spark (GB10)", True),
        Target("hopper", ("sm90",), "H100, H200", False, "full TensorRT on a Hopper GPU"),
        Target(
            "orin", ("sm87",), "Jetson AGX Orin, Orin NX, Orin Nano", False, "TensorRT 10.x from JetPack, on the module"
        ),
        Target("thor", ("sm110",), "Jetson Thor", False, "full TensorRT from JetPack, on the module"),
    )
}

# op -> the first TensorRT release whose ONNX parser takes it (TensorRT-RTX 1.7 parses all three)
FIRST_PARSED_IN = {"Attention": "10.14", "RMSNormalization": "10.15", "RotaryEmbedding": "10.15"}


def compute_capability(major: int, minor: int) -> str:
    return f"sm{major}{minor}"


def targets_for(compute: str) -> list[str]:
    """Preset names that include the compute capability `compute` (e.g. sm86 -> ["ampere"])."""
    return [t.name for t in TARGETS.values() if compute in t.compute]


def expand_targets(texts: list[str]) -> list[str]:
    """Preset names replaced by their compute capabilities (`ada` -> sm89), others kept as given,
    in order, each once."""
    out: list[str] = []
    for text in texts:
        preset = TARGETS.get(text.strip().lower())
        out += list(preset.compute) if preset else [text]
    return list(dict.fromkeys(out))


def why_not(compute: str) -> str:
    """What builds a compute capability TensorRT-RTX does not: e.g. "orin: TensorRT 10.x from JetPack"."""
    named = [t for t in TARGETS.values() if compute in t.compute and t.needs]
    return "; ".join(f"{t.name} ({t.gpus}) needs {t.needs}" for t in named)
