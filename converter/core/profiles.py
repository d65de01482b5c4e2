"""Input shapes and optimization profiles, and the `--shapes` syntax that names them.

`name:1x8/4x128/16x256` is trtexec's and Polygraphy's min/opt/max form; `name:1x128` a
static shape. Every command and the API parse shapes here, so the syntax and its
one-line errors are the same everywhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from converter.core.errors import InvalidInputError

MAX_DIM = 2**31 - 1


@dataclass
class ShapeProfile:
    """min/opt/max shapes for one input (an optimization profile entry)."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    def check(self, where: str) -> ShapeProfile:
        """Itself, or InvalidInputError: equal ranks, dims in [1, 2**31 - 1] (TensorRT's
        dims are int32), min <= opt <= max in every dim."""
        shapes = (self.min, self.opt, self.max)
        if len({len(s) for s in shapes}) != 1:
            raise InvalidInputError(f"{where}: min/opt/max must have the same rank, got {[list(s) for s in shapes]}")
        for shape in shapes:
            if not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_DIM for d in shape):
                raise InvalidInputError(f"{where}: dims must be integers in [1, {MAX_DIM}], got {list(shape)}")
        if not all(a <= b <= c for a, b, c in zip(*shapes, strict=True)):
            raise InvalidInputError(f"{where}: need min <= opt <= max in every dim, got {[list(s) for s in shapes]}")
        return self


def parse_shape(text: str) -> tuple[int, ...]:
    """'1x3x224x224' -> (1, 3, 224, 224)."""
    if not re.fullmatch(r"\d{1,30}(x\d{1,30})*", text.strip()):
        raise InvalidInputError(f"bad shape '{text}': expected positive dims joined by 'x', e.g. 1x3x224x224")
    dims = tuple(int(d) for d in text.strip().split("x"))
    if 0 in dims:
        raise InvalidInputError(f"bad shape '{text}': dims must be at least 1")
    if max(dims) > MAX_DIM:
        raise InvalidInputError(f"bad shape '{text}': dims must be at most {MAX_DIM} (TensorRT's dims are int32)")
    return dims


def parse_profiles(items: list[str] | tuple[str, ...]) -> dict[str, ShapeProfile]:
    """'name:1x8/4x128/16x256' (min/opt/max) or 'name:1x128' (static) -> profiles."""
    profiles: dict[str, ShapeProfile] = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        if not sep or not name:
            raise InvalidInputError(f"--shapes '{item}': expected NAME:MIN/OPT/MAX or NAME:SHAPE")
        parts = [parse_shape(p) for p in dims.split("/")]
        if len(parts) == 1:
            parts *= 3
        if len(parts) != 3 or len({len(p) for p in parts}) != 1:
            raise InvalidInputError(f"--shapes '{item}': need one shape or three of equal rank (min/opt/max)")
        profiles[name] = ShapeProfile(*parts).check(f"--shapes '{item}'")
    return profiles


def parse_profile_groups(items: list[str] | tuple[str, ...]) -> list[dict[str, ShapeProfile]]:
    """Repeated `--profile 'a:1x1/1x8/4x64,b:...'`: one optimization profile per item, each a
    comma-separated list of `--shapes` entries (Polygraphy's repeated --trt-*-shapes, in one flag)."""
    groups = []
    for item in items:
        entries = [entry.strip() for entry in item.split(",") if entry.strip()]
        if not entries:
            raise InvalidInputError(f"--profile '{item}': expected NAME:MIN/OPT/MAX[,NAME:MIN/OPT/MAX...]")
        groups.append(parse_profiles(entries))
    return groups


def trtexec_shapes(min_shapes: str | None, opt_shapes: str | None, max_shapes: str | None) -> list[str]:
    """trtexec's `--minShapes/--optShapes/--maxShapes` (each `name:1x3x224x224,name2:...`) as
    `--shapes` items (`name:MIN/OPT/MAX`); every name needs all three (or only --opt-shapes: static)."""
    given = {"--min-shapes": min_shapes, "--opt-shapes": opt_shapes, "--max-shapes": max_shapes}
    parsed: dict[str, dict[str, str]] = {}
    for flag, text in given.items():
        for item in filter(None, (text or "").split(",")):
            name, sep, dims = item.strip().rpartition(":")
            if not sep or not name:
                raise InvalidInputError(f"{flag} '{item}': expected NAME:SHAPE[,NAME:SHAPE...]")
            parsed.setdefault(name, {})[flag] = dims
    items = []
    for name, dims in parsed.items():
        if set(dims) == {"--opt-shapes"}:
            items.append(f"{name}:{dims['--opt-shapes']}")
            continue
        missing = [flag for flag in given if flag not in dims]
        if missing:
            raise InvalidInputError(
                f"input '{name}': given in {', '.join(sorted(dims))} but not in {', '.join(missing)}"
            )
        items.append(f"{name}:{dims['--min-shapes']}/{dims['--opt-shapes']}/{dims['--max-shapes']}")
    return items


def profiles_to_json(profiles: dict[str, ShapeProfile]) -> str:
    """Profiles as the JSON `export` stores in the ONNX metadata (`trtforge.profiles`)."""
    return json.dumps({name: prof.to_dict() for name, prof in sorted(profiles.items())}, sort_keys=True)


def profiles_from_json(text: str) -> dict[str, ShapeProfile]:
    """The inverse of profiles_to_json; an unreadable entry is ignored (the metadata is only a default)."""
    try:
        data = json.loads(text) if text else {}
        return {
            str(name): ShapeProfile(*(tuple(int(d) for d in entry[key]) for key in ("min", "opt", "max"))).check(name)
            for name, entry in data.items()
        }
    except (ValueError, TypeError, KeyError, AttributeError, InvalidInputError):
        return {}
