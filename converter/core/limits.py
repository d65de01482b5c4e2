"""Resource limits on what users' files may declare, each with a generous default and a way to raise it.

A 100-byte file can claim a 2**40-element tensor, a PNG header 20000x20000 pixels, a
recipe a hundred billion verification batches: each is refused with one line naming the
file, the size and how to raise the limit, before anything allocates or loops. A limit is
raised per run with `trtforge --limit NAME=VALUE` (repeatable) or the environment
variable TRTFORGE_MAX_<NAME> (for the API); `trtforge --limit help` lists them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from converter.core.errors import InvalidInputError


@dataclass(frozen=True)
class Limit:
    name: str
    default: int
    what: str

    @property
    def env(self) -> str:
        return "TRTFORGE_MAX_" + self.name.upper().replace("-", "_")

    def value(self) -> int:
        """The limit in force: the environment's override when it is a positive integer, else the default."""
        text = os.environ.get(self.env, "")
        return int(text) if text.isdigit() and int(text) > 0 else self.default

    def how_to_raise(self) -> str:
        return f"raise it with --limit {self.name}=N or ${self.env}"


LIMITS: dict[str, Limit] = {
    limit.name: limit
    for limit in (
        Limit("tensor-bytes", 64 << 30, "bytes of one tensor declared by a model, .npy or .npz file"),
        Limit("image-pixels", 1 << 26, "pixels of one calibration image (about 8192 x 8192)"),
        Limit("recipe-bytes", 4 << 20, "bytes of a recipe file (or a report.json holding one)"),
        Limit("batches", 10_000, "verification batches a recipe asks for"),
    )
}

_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def limit(name: str) -> int:
    return LIMITS[name].value()


def describe() -> str:
    """The table `--limit help` prints."""
    return "\n".join(f"{lim.name:<14} default {lim.default:>14,}  {lim.what} (${lim.env})" for lim in LIMITS.values())


def set_limits(items: list[str] | tuple[str, ...]) -> None:
    """Apply `NAME=VALUE` overrides (VALUE an integer, optionally with a K/M/G/T binary suffix)
    for this process; a bad item is an InvalidInputError naming it."""
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in LIMITS:
            raise InvalidInputError(f"--limit '{item}': expected NAME=VALUE with NAME one of {sorted(LIMITS)}")
        match = re.fullmatch(r"(\d{1,18})([kmgt]?)(i?b)?", text.strip().lower())
        value = int(match.group(1)) * _SUFFIXES[match.group(2)] if match else 0
        if value <= 0:
            raise InvalidInputError(f"--limit '{item}': VALUE must be a positive integer, e.g. 128G")
        os.environ[LIMITS[name].env] = str(value)
