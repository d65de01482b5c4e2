"""Numeric options out of range are usage errors (exit 2) naming the option, before any work."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from converter.cli.main import main
from converter.core.errors import ExitCode

BAD = [
    ("drop-blocks", "--min-cosine", "nan"),
    ("drop-blocks", "--min-cosine", "1.5"),
    ("drop-blocks", "--remove", "-1"),
    ("drop-blocks", "--remove", "0"),
    ("drop-blocks", "--target-params", "5"),
    ("drop-blocks", "--target-flops", "0"),
    ("drop-blocks", "--max-ppl-increase", "-0.1"),
    ("drop-blocks", "--max-ppl-increase", "inf"),
    ("drop-blocks", "--beam", "0"),
    ("drop-blocks", "--calibration-samples", "0"),
    ("quantize", "--budget", "-1"),
    ("quantize", "--budget", "nan"),
    ("quantize", "--search-samples", "0"),
    ("quantize", "--max-length", "0"),
    ("quantize", "--batch-size", "0"),
    ("verify", "--atol", "-1"),
    ("verify", "--rtol", "nan"),
]


@pytest.mark.parametrize(("command", "option", "value"), BAD)
def test_out_of_range_value_is_a_usage_error(command, option, value, tmp_path):
    args = [command, "decoder-lm", option, value]
    if command != "verify":
        args += ["-o", str(tmp_path / "o.onnx")]
    else:
        args.insert(2, "decoder-lm")
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert option in result.output  # click refuses it while parsing: the command body never runs
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_cosine", float("nan")),
        ("min_cosine", 1.5),
        ("max_ppl_increase", float("nan")),
        ("max_ppl_increase", -1.0),
        ("target_params", 5.0),
        ("target_flops", float("inf")),
        ("remove", -1),
        ("remove", 0),
    ],
)
def test_drop_config_refuses_out_of_range_goals_from_the_api_and_recipes(field, value):
    from passes.blocks.config import DropConfig

    with pytest.raises(ValueError, match=field):
        DropConfig(**{field: value})


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\npasses: [cleanup]\n", "aliases"),
        (b"passes: [cleanup]\n# " + b"x" * (5 << 20) + b"\n", "at most"),
        (b"passes: [cl\xffeanup]\n", "not UTF-8"),
        (b"passes: {cleanup: 1}\n", "recipe"),
    ],
)
def test_hostile_recipes_are_refused_with_one_line(content, expected, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(content)
    result = CliRunner().invoke(main, ["convert", "decoder-lm", "--recipe", str(recipe), "-o", str(tmp_path / "o")])
    assert result.exit_code == ExitCode.INVALID_INPUT, result.output
    assert expected in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_dtypes_without_a_colon_is_a_usage_error(tmp_path):
    args = [
        "export",
        "tests.tiny_models:plain_mlp",
        "--shapes",
        "x:2x16",
        "--dtypes",
        "int64",
        "-o",
        str(tmp_path / "m.onnx"),
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == ExitCode.USAGE and "--dtypes 'int64'" in result.output
    assert list(tmp_path.iterdir()) == []
