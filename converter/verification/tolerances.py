"""Tolerances: when a candidate's output counts as equal to the reference's.

Per precision: elementwise |a - b| <= atol + rtol * |b|, and cosine >= min_cosine;
optionally per output (Polygraphy's `--atol out:1e-3`). The verifier owns them; a
recipe only names overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_TOLERANCES = {
    "fp32": {"atol": 1e-4, "rtol": 1e-3, "min_cosine": 0.9999},
    "fp16": {"atol": 5e-2, "rtol": 5e-2, "min_cosine": 0.999},
    "bf16": {"atol": 1e-1, "rtol": 5e-2, "min_cosine": 0.99},
}
TOLERANCE_KEYS = ("atol", "rtol", "min_cosine")


@dataclass
class Tolerances:
    """Default tolerances, plus optional per-output overrides (Polygraphy's `--atol out:1e-3`)."""

    atol: float
    rtol: float
    min_cosine: float
    per_output: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def for_precision(cls, precision: str, overrides: dict[str, float] | None = None) -> Tolerances:
        values = dict(DEFAULT_TOLERANCES[precision])
        values.update({k: float(v) for k, v in (overrides or {}).items() if v is not None})
        return cls(**values)

    def for_output(self, name: str) -> Tolerances:
        """The tolerances that apply to output `name`."""
        special = self.per_output.get(name)
        if not special:
            return self
        return Tolerances(
            special.get("atol", self.atol), special.get("rtol", self.rtol), special.get("min_cosine", self.min_cosine)
        )
