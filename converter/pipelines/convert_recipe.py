"""The recipe a `convert` run uses: the caller's (a Recipe, a file, the default) with the flags merged in.

Everything that can be refused without running anything is refused here, before the
export: an unknown pass or option, a target the backend cannot build, a pass whose graph
pays off only with plugins on a backend without them.
"""

from __future__ import annotations

from pathlib import Path

from converter.backends import Backend, BuildConfig, ShapeProfile, get_backend
from converter.core.errors import UnsupportedError
from converter.pipelines.optimize import check_passes
from converter.pipelines.recipe import Recipe, load_recipe
from passes.registry import PASSES, expand_groups


def recipe_for_run(
    recipe: Recipe | str | Path | None,
    precision: str | None = None,
    backend: str | None = None,
    target_gpus: list[str] | None = None,
    shapes: dict[str, ShapeProfile] | None = None,
    profiles: list[dict[str, ShapeProfile]] | None = None,
    calibration: str | Path | None = None,
) -> Recipe:
    """A copy of the recipe (a Recipe, a file, or the default) with the flags merged in, validated."""
    if recipe is None:
        recipe = Recipe()
    rec = recipe.copy() if isinstance(recipe, Recipe) else load_recipe(recipe)
    if precision:
        rec.precision = precision
    if backend:
        rec.backend = backend
    if target_gpus:
        rec.target_gpus = list(target_gpus)
    if shapes:
        rec.shapes.update(shapes)
    if profiles:
        rec.profiles = list(profiles)
    if calibration:
        rec.calibration = str(calibration)
    Recipe.from_dict(rec.to_dict())  # validates the merged recipe
    check_passes(rec.effective_passes())  # a bad pass name or option fails before the export
    config = BuildConfig(profiles={}, target_gpus=list(rec.target_gpus), precision=rec.precision)
    backend = get_backend(rec.backend)
    backend.check_config(config)  # so does a target the backend cannot build
    check_plugins(rec, backend)
    return rec


def check_plugins(rec: Recipe, backend: Backend) -> None:
    """A pass whose graph pays off only with plugins is refused for a backend without them."""
    if backend.supports_plugins:
        return
    for name, _ in expand_groups([(p.name, p.options) for p in rec.effective_passes()]):
        why = PASSES[name].needs_plugins if name in PASSES else ""
        if why:
            raise UnsupportedError(
                f"pass '{name}' with backend {backend.name}: {why}; leave the pass out, or build with --backend tensorrt"
            )
