"""The registry: names that agree, and a recipe's passes validated before anything runs."""

from __future__ import annotations

import importlib
import inspect
import time

import pytest

from converter.core.errors import InvalidInputError
from passes.registry import DESCRIPTIONS, GROUPS, PASSES, PassSpec, build_passes, create_pass, needs_calibration


@pytest.mark.parametrize("name", sorted(PASSES))
def test_module_pass_and_class_names_agree(name):
    cls = PASSES[name]
    module = importlib.import_module(cls.__module__)
    assert module.__name__.rsplit(".", 1)[1] == name.replace("-", "_")
    assert cls.__name__.lower() == name.replace("-", "")
    assert DESCRIPTIONS[name] and inspect.getdoc(module)


def test_unknown_pass_suggests_the_closest_name():
    with pytest.raises(InvalidInputError, match="unknown pass 'fold-constant' \\(did you mean 'fold-constants'\\?"):
        create_pass("fold-constant")
    with pytest.raises(InvalidInputError, match="unknown pass 'warp-drive' \\(known: cleanup"):
        create_pass("warp-drive")


def test_unknown_option_suggests_the_closest_option():
    with pytest.raises(InvalidInputError, match="pass 'quantize': unknown option 'methd' \\(did you mean 'method'\\?"):
        create_pass("quantize", {"methd": "minmax"})
    with pytest.raises(InvalidInputError, match="unknown option 'bogus' \\(it takes no options\\)"):
        create_pass("cleanup", {"bogus": 1})


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("fuse-attention", {"upgrade_opset": "no"}, "option 'upgrade_opset' = 'no' is not bool"),
        ("precision", {"keep_fp32_ops": "MatMul"}, "option 'keep_fp32_ops' = 'MatMul' is not"),
        ("upgrade-opset", {"target": "23"}, "option 'target' = '23' is not int"),
        ("upgrade-opset", {"target": 99}, "target opset 99 not in 7"),
        ("quantize", {"mode": "int3"}, "mode 'int3' not in"),
        ("quantize", {"percentile": 120}, "percentile 120 not in"),
        ("quantize", {"sensitivity_samples": True}, "option 'sensitivity_samples' = True is not int"),
        ("smoothquant", {"alpha": 2}, "alpha 2 not in"),
        ("fold-constants", {"size_cap_bytes": -1}, "size_cap_bytes must be >= 0"),
    ],
)
def test_bad_option_values_fail_when_the_pass_is_built(name, options, message):
    with pytest.raises(InvalidInputError, match=message):
        create_pass(name, options)


def test_values_as_yaml_gives_them_are_accepted():
    assert create_pass("smoothquant", {"alpha": 1}).alpha == 1  # an int is a float
    assert create_pass("quantize", {"exclude_names": ("a*",), "block_size": None}).exclude_names == ("a*",)
    assert create_pass("smoothquant", {"cache_dir": None}).cache_dir is None


def test_build_passes_expands_groups_and_validates_every_pass_up_front():
    built = build_passes([PassSpec("fold"), PassSpec("precision", {"target": "bf16"})])
    assert [spec.name for spec, _ in built] == [*GROUPS["fold"], "precision"]
    assert all(type(pass_) is PASSES[spec.name] for spec, pass_ in built)
    assert built[-1][1].target == "bf16"
    start = time.perf_counter()
    with pytest.raises(InvalidInputError, match="pass 'quantize': unknown option 'mehtod'"):
        build_passes([PassSpec("fold"), PassSpec("quantize", {"mehtod": "mse"})])
    assert time.perf_counter() - start < 0.5
    with pytest.raises(InvalidInputError, match="pass group 'fold' takes no options"):
        build_passes([PassSpec("fold", {"x": 1})])


def test_needs_calibration_reads_the_declared_capability():
    assert not needs_calibration(["fold", "precision"])
    assert needs_calibration(["fold", "smoothquant"]) and needs_calibration(["quantize"])
    assert needs_calibration(["drop-blocks"])
    assert not needs_calibration(["no-such-pass"])
    assert {name for name, cls in PASSES.items() if cls.needs_calibration} == {"smoothquant", "quantize", "drop-blocks"}


def test_passes_that_need_data_say_when_they_cannot_work_without_it():
    from passes.registry import requiring_calibration

    assert requiring_calibration([PassSpec("quantize"), PassSpec("smoothquant")]) == ["quantize", "smoothquant"]
    assert requiring_calibration([PassSpec("quantize", {"mode": "int4-wo"})]) == []  # weights only
    assert requiring_calibration([PassSpec("drop-blocks", {"drop": ["block0"]})]) == []  # named blocks
    assert requiring_calibration([PassSpec("drop-blocks", {"remove": 1})]) == ["drop-blocks"]
    assert requiring_calibration([PassSpec("fold")]) == []
