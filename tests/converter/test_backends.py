from __future__ import annotations

import json

import onnx
import pytest

from converter import api
from converter.backends import ShapeProfile, get_backend, load_sidecar
from converter.backends.tensorrt_rtx import normalize_target
from converter.core.errors import BackendUnavailableError, BuildError, InvalidInputError, UnsupportedError
from converter.core.metadata import PROFILES
from tests.graphs import unsupported_op_graph


def test_auto_picks_an_importable_backend():
    assert get_backend("auto").name in ("tensorrt", "tensorrt-rtx")


def test_full_tensorrt_unavailable_here_is_a_clear_error():
    pytest.importorskip("tensorrt_rtx")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailableError, match="cannot import tensorrt"):
            get_backend("tensorrt")


def test_rtx_builds_engine_with_sidecar(tiny_engine, tiny_onnx):
    assert tiny_engine.stat().st_size > 10_000
    side, why = load_sidecar(tiny_engine)
    assert why == ""
    assert side["backend"] == "tensorrt-rtx" and side["targets"] == ["sm86"]
    assert side["engine_bytes"] == tiny_engine.stat().st_size
    assert side["profiles"]["image"] == {"min": [1, 3, 32, 32], "opt": [2, 3, 32, 32], "max": [8, 3, 32, 32]}
    net = side["network"]
    assert net["layer_types"]["CONVOLUTION"] == 2
    assert net["inputs"][0]["name"] == "image" and net["tensor_dtypes"]["FLOAT"] > 0
    assert side["source_sha256"] and len(side["engine_sha256"]) == 64


def test_rtx_builds_several_targets_in_one_engine(tmp_path, tiny_onnx):
    from converter.pipelines.model_ref import resolve_spec

    art = api.build(
        tiny_onnx,
        tmp_path / "multi.engine",
        backend="tensorrt-rtx",
        shapes=resolve_spec("tests.tiny_models:conv_net").profiles,
        target_gpus=["sm80", "8.9", "SM_120"],
    )
    assert art.sidecar["targets"] == ["sm80", "sm89", "sm120"]


def test_hopper_target_needs_full_tensorrt(tmp_path, tiny_onnx):
    with pytest.raises(UnsupportedError, match="cannot target sm90"):
        api.build(
            tiny_onnx,
            tmp_path / "h.engine",
            backend="tensorrt-rtx",
            shapes={"image": ShapeProfile((1, 3, 32, 32), (1, 3, 32, 32), (1, 3, 32, 32))},
            target_gpus=["sm90"],
        )
    assert not (tmp_path / "h.engine").exists()


def test_dynamic_input_without_profile_is_explained(tmp_path, tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    kept = [p for p in model.metadata_props if p.key != PROFILES]  # a file export did not write
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(InvalidInputError, match="dynamic inputs need a min/opt/max profile each, e.g. --shapes image:"):
        api.build(bare, tmp_path / "x.engine", backend="tensorrt-rtx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.onnx"]


def test_profile_that_does_not_fit_is_rejected(tmp_path, tiny_onnx):
    bad = {"image": ShapeProfile((1, 3, 32, 32), (2, 3, 32, 32), (8, 4, 32, 32))}
    with pytest.raises(InvalidInputError, match="does not fit"):
        api.build(tiny_onnx, tmp_path / "x.engine", backend="tensorrt-rtx", shapes=bad)


def test_unsupported_op_names_the_node(tmp_path):
    path = tmp_path / "custom.onnx"
    onnx.save(unsupported_op_graph(), str(path))
    with pytest.raises(BuildError) as info:
        api.build(path, tmp_path / "custom.engine", backend="tensorrt-rtx")
    message = str(info.value)
    assert "my_fancy_node" in message and "FancyOp" in message and "\n" not in message
    assert not (tmp_path / "custom.engine").exists()


@pytest.mark.parametrize("text, expected", [("sm86", "sm86"), ("8.6", "sm86"), ("SM_120", "sm120"), ("89", "sm89")])
def test_target_names(text, expected):
    assert normalize_target(text) == expected


def test_engine_cannot_run_without_gpu(tiny_engine):
    backend = get_backend("tensorrt-rtx")
    ok, why = backend.can_run()
    if not ok:
        assert "GPU" in why
        with pytest.raises(BackendUnavailableError):
            backend.run(tiny_engine, {})


def test_sidecar_is_valid_json(tiny_engine):
    json.loads(tiny_engine.with_name(tiny_engine.name + ".json").read_text())


def test_stale_sidecar_is_ignored(tmp_path, tiny_engine):
    import shutil

    engine = tmp_path / "copy.engine"
    shutil.copy(tiny_engine, engine)
    shutil.copy(tiny_engine.with_name(tiny_engine.name + ".json"), tmp_path / "copy.engine.json")
    assert load_sidecar(engine)[0] is not None
    engine.write_bytes(engine.read_bytes() + b"x")  # the engine changed after its sidecar was written
    side, why = load_sidecar(engine)
    assert side is None and "describes another engine" in why
    (tmp_path / "copy.engine.json").write_text("[1, 2")
    assert "not valid JSON" in load_sidecar(engine)[1]
