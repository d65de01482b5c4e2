"""Resource limits (converter/core/limits.py), shape profiles and engine sidecars from disk."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from converter.backends import load_sidecar
from converter.cli.main import main
from converter.core.errors import ExitCode, InvalidInputError
from converter.core.limits import LIMITS, limit, set_limits
from converter.core.profiles import ShapeProfile, parse_profiles, profiles_from_json


def test_limits_are_raised_by_name_with_binary_suffixes(monkeypatch):
    monkeypatch.delenv(LIMITS["tensor-bytes"].env, raising=False)
    assert limit("tensor-bytes") == 64 << 30
    set_limits(["tensor-bytes=128G", "image-pixels=100m"])
    assert limit("tensor-bytes") == 128 << 30 and limit("image-pixels") == 100 << 20
    monkeypatch.setenv(LIMITS["batches"].env, "not a number")
    assert limit("batches") == LIMITS["batches"].default  # a bad override is ignored, never 0


@pytest.mark.parametrize("item", ["tensor-bytes", "memory=1G", "batches=0", "batches=-3", "batches=lots"])
def test_bad_limit_items_are_refused(item, monkeypatch):
    for lim in LIMITS.values():
        monkeypatch.delenv(lim.env, raising=False)
    with pytest.raises(InvalidInputError, match="--limit"):
        set_limits([item])


def test_limit_help_lists_every_limit():
    result = CliRunner().invoke(main, ["--limit", "help"])
    assert result.exit_code == 0 and all(name in result.output for name in LIMITS)


def test_a_raised_limit_lets_a_large_recipe_through(tmp_path, monkeypatch):
    monkeypatch.delenv(LIMITS["batches"].env, raising=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("verify_batches: 20000\npasses: [cleanup]\n")
    from converter.pipelines.recipe import load_recipe

    with pytest.raises(InvalidInputError, match="verify_batches"):
        load_recipe(recipe)
    monkeypatch.setenv(LIMITS["batches"].env, "20000")
    assert load_recipe(recipe).verify_batches == 20000


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        (ShapeProfile((4, 4), (2, 4), (8, 4)), "min <= opt <= max"),
        (ShapeProfile((1, 4), (2, 4), (8,)), "same rank"),
        (ShapeProfile((0, 4), (2, 4), (8, 4)), "integers in"),
        (ShapeProfile((1, 4), (2, 4), (2**31, 4)), "integers in"),
    ],
)
def test_bad_profiles_are_refused(profile, expected):
    with pytest.raises(InvalidInputError, match=expected):
        profile.check("x")


def test_profiles_from_flags_and_metadata_are_checked():
    with pytest.raises(InvalidInputError, match="at most 2147483647"):
        parse_profiles(["x:1x4/2x4/99999999999x4"])
    good = ShapeProfile((1, 4), (2, 4), (8, 4))
    assert parse_profiles(["x:1x4/2x4/8x4"]) == {"x": good}
    assert profiles_from_json(json.dumps({"x": {"min": [8], "opt": [1], "max": [2]}})) == {}  # ignored, a default


def _engine(tmp_path, **changes):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine bytes")
    sidecar = {
        "format": "trtforge-engine-sidecar/1",
        "backend": "tensorrt-rtx",
        "backend_version": "1.7",
        "precision": "fp16",
        "profiles": {"x": {"min": [1], "opt": [2], "max": [4]}},
        "engine_bytes": len(b"engine bytes"),
        "engine_sha256": hashlib.sha256(b"engine bytes").hexdigest(),
        "network": {"num_layers": 3, "layer_types": {"MatMul": 3}, "tensor_dtypes": {"FLOAT": 4}},
    }
    sidecar.update(changes)
    (tmp_path / "m.engine.json").write_text(json.dumps(sidecar))
    return engine


def test_a_matching_sidecar_is_read(tmp_path):
    data, why = load_sidecar(_engine(tmp_path))
    assert why == "" and data["backend"] == "tensorrt-rtx"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"format": "other/1"}, "not a trtforge sidecar"),
        ({"backend": 3}, "'backend'"),
        ({"engine_bytes": True}, "'engine_bytes'"),
        ({"network": {"num_layers": 3}}, "'layer_types'"),
        ({"profiles": {"x": [1, 2]}}, "malformed profile"),
        ({"engine_sha256": "0" * 64}, "describes another engine"),
    ],
)
def test_foreign_or_malformed_sidecars_are_ignored_with_a_reason(tmp_path, changes, expected):
    engine = _engine(tmp_path, **changes)
    data, why = load_sidecar(engine)
    assert data is None and expected in why and why.endswith("ignored")
    result = CliRunner().invoke(main, ["inspect", str(engine)], catch_exceptions=False)
    assert result.exit_code == ExitCode.OK and "ignored" in result.output
