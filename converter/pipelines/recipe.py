"""Recipe: the written-down form of one conversion (passes, precision, target, tolerances).

A recipe is YAML or JSON (read with yaml.safe_load, which reads both). Every run
writes the recipe it actually used into its report, so
`trtforge convert MODEL --recipe report.json` (the `recipe` key is picked out)
reproduces a result. Unknown keys are errors, not silently ignored.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from converter.core.errors import InvalidInputError
from converter.core.limits import LIMITS, limit
from converter.core.profiles import ShapeProfile
from converter.pipelines.budget.spec import Budget
from converter.verification.tolerances import TOLERANCE_KEYS, Tolerances
from passes.registry import PassSpec

PRECISIONS = ("fp32", "fp16", "bf16")

DEFAULT_PASSES = ["fold"]

# Bounds that stop a typo (verify_batches: 1e11) from running until killed; generous for real use.
MAX_BATCH_SIZE = 4096
MAX_OPSET = 30
MAX_PROFILES = 64  # TensorRT's own limit on optimization profiles is far above any real use
MAX_GENERATE_TOKENS = 4096


@dataclass
class Recipe:
    passes: list[PassSpec] = field(default_factory=lambda: [PassSpec(n) for n in DEFAULT_PASSES])
    precision: str = "fp32"
    backend: str = "auto"
    target_gpus: list[str] = field(default_factory=list)
    shapes: dict[str, ShapeProfile] = field(default_factory=dict)
    # optimization profiles of one engine, in order (trtexec/Polygraphy's repeated profiles);
    # [] = one from `shapes`, or prefill + decode for a decoder with a KV cache
    profiles: list[dict[str, ShapeProfile]] = field(default_factory=list)
    exporter: str = "torchscript"
    opset: int | None = None
    tolerances: dict[str, float] = field(default_factory=dict)
    verify_batches: int = 2
    verify_batch_size: int = 4
    generate_tokens: int = 32  # greedy tokens per prompt in a cache model's generation check (0: none)
    generate_prompts: int = 8
    # the accuracy contract (`cosine>=0.99`, `ppl<=+5%`, `top1>=0.98`): lossy stages are judged by it
    # instead of elementwise tolerances (pipelines/budget/check.py); `convert --budget` writes it
    budget: str | None = None
    # calibration data for the passes that need it (a folder of .npz/.npy, images or .txt, or one .npz), as
    # given (relative to the working folder); None: the model's own sample data
    calibration: str | None = None

    def effective_passes(self) -> list[PassSpec]:
        """The recipe's passes, plus the precision pass at the end when precision is not fp32."""
        passes = list(self.passes)
        if self.precision != "fp32" and not any(p.name == "precision" for p in passes):
            passes.append(PassSpec("precision", {"target": self.precision}))
        return passes

    def tolerance(self, precision: str | None = None) -> Tolerances:
        """The verifier's tolerances at `precision` (default: the recipe's), with the recipe's overrides."""
        return Tolerances.for_precision(precision or self.precision, self.tolerances)

    def copy(self) -> Recipe:
        """An independent copy: a use case changes its copy, never its caller's recipe."""
        return copy.deepcopy(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passes": [{"name": p.name, "options": p.options} if p.options else p.name for p in self.passes],
            "precision": self.precision,
            "backend": self.backend,
            "target_gpus": list(self.target_gpus),
            "shapes": {k: v.to_dict() for k, v in self.shapes.items()},
            "profiles": [{k: v.to_dict() for k, v in group.items()} for group in self.profiles],
            "exporter": self.exporter,
            "opset": self.opset,
            "tolerances": dict(self.tolerances),
            "verify_batches": self.verify_batches,
            "verify_batch_size": self.verify_batch_size,
            "generate_tokens": self.generate_tokens,
            "generate_prompts": self.generate_prompts,
            "budget": self.budget,
            "calibration": self.calibration,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> Recipe:
        if "recipe" in data and isinstance(data["recipe"], dict):  # a trtforge report
            data = data["recipe"]
        known = set(cls().to_dict())
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(f"{source}: unknown key(s) {unknown} (known: {sorted(known)})")
        recipe = cls()
        if "passes" in data:
            if not isinstance(data["passes"], (list, type(None))):
                raise InvalidInputError(f"{source}: passes must be a list, e.g. [cleanup, fold]")
            recipe.passes = [_pass_spec(item, source) for item in data["passes"] or []]
        for key in ("precision", "backend", "exporter"):
            if key in data:
                setattr(recipe, key, str(data[key]))
        _one_of(source, "precision", recipe.precision, PRECISIONS)
        _one_of(source, "exporter", recipe.exporter, ("torchscript", "dynamo"))
        _one_of(source, "backend", recipe.backend.replace("_", "-"), ("auto", "tensorrt", "tensorrt-rtx"))
        if not isinstance(data.get("target_gpus") or [], list):
            raise InvalidInputError(f"{source}: target_gpus must be a list, e.g. [sm86, sm89]")
        recipe.target_gpus = [str(t) for t in data.get("target_gpus") or []]
        shapes = _mapping(source, "shapes", data.get("shapes"), "e.g. {input_ids: {min: [1, 8], opt: ..., max: ...}}")
        recipe.shapes = {str(k): _profile(v, f"{source}: shapes.{k}") for k, v in shapes.items()}
        recipe.profiles = _profile_groups(source, data.get("profiles"))
        if data.get("opset") is not None:
            recipe.opset = _number(source, "opset", data["opset"], int, 7, MAX_OPSET)
        tolerances = _mapping(source, "tolerances", data.get("tolerances"), "e.g. {atol: 1e-3}")
        bad = sorted(set(tolerances) - set(TOLERANCE_KEYS))
        if bad:
            raise InvalidInputError(f"{source}: unknown tolerance(s) {bad}")
        recipe.tolerances = {k: _number(source, f"tolerances.{k}", v, float, 0.0) for k, v in tolerances.items()}
        recipe.verify_batches = _number(
            source, "verify_batches", data.get("verify_batches", 2), int, 1, limit("batches")
        )
        recipe.verify_batch_size = _number(
            source, "verify_batch_size", data.get("verify_batch_size", 4), int, 1, MAX_BATCH_SIZE
        )
        recipe.generate_tokens = _number(
            source, "generate_tokens", data.get("generate_tokens", 32), int, 0, MAX_GENERATE_TOKENS
        )
        recipe.generate_prompts = _number(source, "generate_prompts", data.get("generate_prompts", 8), int, 1, 256)
        if data.get("calibration") is not None:
            recipe.calibration = str(data["calibration"])
        if data.get("budget") is not None:
            try:
                recipe.budget = Budget.parse(str(data["budget"])).text
            except InvalidInputError as exc:
                raise InvalidInputError(f"{source}: budget: {exc}") from exc
        return recipe


def _profile_groups(source: str, value: Any) -> list[dict[str, ShapeProfile]]:
    """`profiles: [{input: {min, opt, max}, ...}, ...]`: one mapping per optimization profile."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_PROFILES:
        raise InvalidInputError(f"{source}: profiles must be a list of at most {MAX_PROFILES} mappings")
    groups = []
    for index, group in enumerate(value):
        group = _mapping(source, f"profiles[{index}]", group, "e.g. {input_ids: {min: [1, 1], ...}}")
        groups.append({str(k): _profile(v, f"{source}: profiles[{index}].{k}") for k, v in group.items()})
    return groups


def _one_of(source: str, key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidInputError(f"{source}: {key} '{value}' not in {allowed}")


def _mapping(source: str, key: str, value: Any, example: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"{source}: {key} must be a mapping ({example}), got {type(value).__name__}")
    return value


def _number(source: str, key: str, value: Any, kind: type, minimum: float, maximum: float = math.inf):
    """`value` as a finite int/float in [minimum, maximum], or a one-line error naming the key."""
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInputError(f"{source}: {key} must be a number, got {str(value)[:40]!r}") from exc
    if (
        isinstance(value, bool)
        or not math.isfinite(number)
        or not minimum <= number <= maximum
        or (kind is int and number != value)
    ):
        upper = f" and <= {maximum:g}" if math.isfinite(maximum) else ""
        raise InvalidInputError(f"{source}: {key} must be a {kind.__name__} >= {minimum}{upper}, got {value!r}")
    return number


def _pass_spec(item: Any, source: str) -> PassSpec:
    if isinstance(item, str):
        return PassSpec(item)
    if isinstance(item, dict) and "name" in item:
        unknown = sorted(str(k) for k in set(item) - {"name", "options"})
        if unknown:
            raise InvalidInputError(f"{source}: pass {str(item['name'])!r} has unknown key(s) {unknown}")
        options = item.get("options") or {}
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise InvalidInputError(
                f"{source}: options of pass {str(item['name'])!r} must be a mapping of option names to values, "
                f"got {type(options).__name__}"
            )
        return PassSpec(str(item["name"]), dict(options))
    raise InvalidInputError(f"{source}: a pass must be a name or {{name, options}}, got {item!r}")


def _profile(value: Any, where: str) -> ShapeProfile:
    try:
        profile = ShapeProfile(tuple(value["min"]), tuple(value["opt"]), tuple(value["max"]))
    except (KeyError, TypeError) as exc:
        raise InvalidInputError(f"{where}: expected {{min, opt, max}} lists") from exc
    return profile.check(where)


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader without aliases: nested `*alias` references ("billion laughs") expand into
    an exponentially large recipe once it is copied into the report; a recipe needs none."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed here", event.start_mark)
        return super().compose_node(parent, index)


def load_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML/JSON mapping from a small config file (`what`: "recipe", "manifest"): bounded in
    size, UTF-8, no aliases; every problem a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such {what} file")
    bound = LIMITS["recipe-bytes"]  # a recipe or manifest (or a report.json holding one) is kilobytes
    if path.stat().st_size > bound.value():
        raise InvalidInputError(
            f"{path}: {path.stat().st_size:,} bytes; a {what} is at most {bound.value():,} ({bound.how_to_raise()})"
        )
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliasLoader)  # noqa: S506 (safe loader)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"{path}: not valid YAML/JSON ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: a {what} must be a mapping")
    return data


def load_recipe(path: str | Path) -> Recipe:
    """A recipe from YAML/JSON (load_yaml_mapping's rules), then validated field by field."""
    return Recipe.from_dict(load_yaml_mapping(path, "recipe"), str(path))
