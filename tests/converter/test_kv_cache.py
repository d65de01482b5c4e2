"""Decoders exported with their KV cache: the interface, prefill + decode == the full forward,
greedy generation through the ONNX graph (fused too) equal to torch's, a two-profile engine."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from converter import api
from converter.core.errors import InvalidInputError
from converter.core.kv_cache import TASK_WITH_PAST, CacheLayout, layout_from_inputs
from converter.core.metadata import KV_CACHE, metadata_value
from converter.demos.decoder_lm import load
from converter.demos.with_past import cache_feeds, prompt_tokens
from converter.pipelines.model_ref import resolve_spec
from converter.verification.compare import OnnxRunner, TorchRunner
from converter.verification.generation import compare_generations, greedy
from passes.attention.fuse_attention import FuseAttention
from passes.base import PassContext

LLAMA = "scripts.llama_spec:tiny_causal_lm"


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def decoder_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm_kv") / "model.onnx"
    api.export("decoder-lm", path, task=TASK_WITH_PAST)
    return path


def test_layout_names_and_the_prefill_and_decode_profiles():
    layout = CacheLayout(num_layers=2, kv_heads=2, head_dim=16, max_length=64, max_prompt=32)
    assert layout.input_names()[3:] == [
        "past_key_values.0.key",
        "past_key_values.0.value",
        "past_key_values.1.key",
        "past_key_values.1.value",
    ]
    prefill, decode = layout.profiles()
    assert prefill["past_key_values.0.key"].max == (4, 2, 0, 16)  # a prefill has no past
    assert prefill["input_ids"].min == (1, 1) and prefill["input_ids"].max == (4, 32)
    assert decode["input_ids"].max == (4, 1)  # one token per decode step
    assert decode["past_key_values.1.value"].min == (1, 2, 1, 16)
    assert decode["attention_mask"].max == (4, 64)  # past 63 + 1 new token
    assert CacheLayout.from_json(layout.to_json()) == layout


def test_layout_is_read_back_from_a_graphs_inputs_and_half_a_cache_is_refused():
    inputs = {"input_ids": ["b", "s"], "past_key_values.0.key": ["b", 4, "p", 64]}
    inputs["past_key_values.0.value"] = ["b", 4, "p", 64]
    assert layout_from_inputs(inputs, {}) == CacheLayout(1, 4, 64)
    assert layout_from_inputs({"input_ids": ["b", "s"]}, {}) is None
    del inputs["past_key_values.0.value"]
    with pytest.raises(InvalidInputError, match="not a decoder with a KV cache"):
        layout_from_inputs(inputs, {})
    with pytest.raises(InvalidInputError, match="head_dim"):
        CacheLayout(1, 2, 0)


def test_decoder_lm_exports_its_cache_with_kv_heads_not_repeated(decoder_onnx):
    model = onnx.load(str(decoder_onnx))
    inputs = {vi.name: _dims(vi) for vi in model.graph.input}
    outputs = {vi.name: _dims(vi) for vi in model.graph.output}
    assert inputs["input_ids"] == ["batch", "sequence"]
    assert inputs["attention_mask"] == ["batch", "total_sequence"]
    assert inputs["past_key_values.7.value"] == ["batch", 2, "past_sequence", 32]  # 2 KV heads of 4 query heads
    assert outputs["present.0.key"] == ["batch", 2, "total_sequence", 32]
    assert len(outputs) == 1 + 16
    assert CacheLayout.from_json(metadata_value(model, KV_CACHE)).num_layers == 8


def test_prefill_then_decode_equals_the_full_sequence_forward(decoder_onnx):
    spec = resolve_spec("decoder-lm", task=TASK_WITH_PAST)
    tokens = prompt_tokens(3, 40, 256)
    with torch.no_grad():
        full = load()(torch.from_numpy(tokens)).numpy()
    feeds = cache_feeds(spec.module(), spec.cache, tokens, prefix=32)  # torch prefill of 32, then 8 more
    for runner in (TorchRunner(spec.module(), spec.input_names, spec.output_names), OnnxRunner(decoder_onnx)):
        out = runner.run(feeds)
        np.testing.assert_allclose(out["logits"], full[:, 32:], atol=1e-5, rtol=0)
        assert out["present.3.key"].shape == (3, 2, 40, 32)


def test_greedy_generation_through_the_fused_graph_equals_torch(decoder_onnx):
    spec = resolve_spec("decoder-lm", task=TASK_WITH_PAST)
    model, result = FuseAttention().run_model(onnx.load(str(decoder_onnx)), PassContext(opset=17))
    assert sum(v for k, v in result.changed.items() if k.startswith("attention_fused")) == 8
    assert not any(n.op_type == "Softmax" for n in model.graph.node)
    prompts = prompt_tokens(4, 48, 256)
    reference = greedy(TorchRunner(spec.module(), spec.input_names, spec.output_names), spec.cache, prompts, 16)
    check = compare_generations(reference, greedy(OnnxRunner(model), spec.cache, prompts, 16), ("torch", "onnx"), 48)
    assert check.identical and check.first_divergent_step == [None] * 4
    assert max(check.max_logits_error_per_step) < 1e-4


def test_generation_check_finds_the_first_divergent_step():
    class Shifted:
        """A runner whose cache is off by one position: the bug only a later step reads."""

        name = "broken"

        def __init__(self, inner):
            self.inner = inner

        def run(self, feeds):
            out = self.inner.run(feeds)
            if feeds["input_ids"].shape[1] == 1:  # decode steps: drop the oldest cached position
                out = {k: (v[:, :, 1:] if k.startswith("present") else v) for k, v in out.items()}
                out = {k: np.concatenate([v[:, :, :1], v], 2) if k.startswith("present") else v for k, v in out.items()}
                out = {k: (v * 0.5 if k.startswith("present") else v) for k, v in out.items()}
            return out

    spec = resolve_spec("decoder-lm", task=TASK_WITH_PAST)
    runner = TorchRunner(spec.module(), spec.input_names, spec.output_names)
    prompts = prompt_tokens(4, 32, 256)
    reference = greedy(runner, spec.cache, prompts, 12)
    check = compare_generations(reference, greedy(Shifted(runner), spec.cache, prompts, 12), ("torch", "bad"), 32)
    assert not check.identical
    assert check.max_logits_error_per_step[0] == 0.0  # the prefill is untouched
    assert any(step is not None and step >= 2 for step in check.first_divergent_step)
    with pytest.raises(InvalidInputError, match="max length"):
        greedy(runner, spec.cache, prompts, 200)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_llama_with_past_exports_and_generates_like_torch(tmp_path, exporter):
    path = tmp_path / "llama.onnx"
    api.export(LLAMA, path, task=TASK_WITH_PAST, exporter=exporter)
    spec = resolve_spec(LLAMA, task=TASK_WITH_PAST)
    assert spec.cache == CacheLayout(2, 2, 16, max_length=128, max_prompt=64)  # GQA: 2 KV heads of 4
    prompts = prompt_tokens(2, 24, 256)
    reference = greedy(TorchRunner(spec.module(), spec.input_names, spec.output_names), spec.cache, prompts, 8)
    check = compare_generations(reference, greedy(OnnxRunner(path), spec.cache, prompts, 8), ("torch", "onnx"), 24)
    assert check.identical


def test_task_on_a_model_without_a_cache_is_a_one_line_error():
    with pytest.raises(InvalidInputError, match="not a decoder with a KV cache"):
        resolve_spec("tests.tiny_models:conv_net", task=TASK_WITH_PAST)
    with pytest.raises(InvalidInputError, match="--task 'bogus'"):
        resolve_spec("decoder-lm", task="bogus")


def test_one_engine_holds_the_prefill_and_decode_profiles(decoder_onnx, tmp_path):
    pytest.importorskip("tensorrt_rtx")
    from converter.backends import get_backend
    from converter.backends.base import BuildConfig

    fused, _ = FuseAttention().run_model(onnx.load(str(decoder_onnx)), PassContext(opset=17))
    onnx.save(fused, tmp_path / "fused.onnx")
    layout = resolve_spec("decoder-lm", task=TASK_WITH_PAST).cache
    config = BuildConfig(profile_sets=layout.profiles(), target_gpus=["sm89"])
    engine = get_backend("tensorrt-rtx").build(tmp_path / "fused.onnx", tmp_path / "m.engine", config)
    side = engine.sidecar
    assert len(side["optimization_profiles"]) == 2
    assert side["optimization_profiles"][0]["past_key_values.0.key"]["max"] == [4, 2, 0, 32]
    assert side["network"]["layer_types"]["ATTENTION_INPUT"] == 8  # one pair per layer
    assert side["network"]["attention_decomposable"] == 8  # fp32: allowed to fall back


def test_convert_a_decoder_with_its_cache_fuses_builds_two_profiles_and_generates_like_torch(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    out = tmp_path / "lm"
    result = api.convert("decoder-lm", out, task=TASK_WITH_PAST, target_gpus=["sm89"])
    report = result.report
    assert report["passed"]
    assert "fuse-opset23" in report["recipe"]["passes"]  # added for a cache model, recorded to reproduce
    fused = next(p for p in report["passes"] if p["name"] == "fuse-attention")
    assert fused["changed"] == {"attention_fused_bert_gqa_cache": 8, "opset_upgraded": 1}
    assert report["network"]["layer_types"]["ATTENTION_INPUT"] == 8
    side = json.loads((out / "model.engine.json").read_text())
    assert [p["input_ids"]["max"] for p in side["optimization_profiles"]] == [[4, 64], [4, 1]]
    generation = report["generation"]
    assert generation["identical"] and len(generation["checks"]) == 2  # model.onnx and model.opt.onnx
    check = generation["checks"][1]
    assert (check["prompts"], check["steps"], check["candidate"]) == (8, 32, "model.opt.onnx")
    assert "not executed" in generation["engine"]  # no GPU here: said, not faked


def test_profiles_in_the_recipe_and_on_the_command_line():
    from converter.core.profiles import parse_profile_groups
    from converter.pipelines.recipe import Recipe

    groups = parse_profile_groups(["x:1x1/1x8/2x16,y:1x4", "x:1x1/1x1/4x1,y:1x4"])
    assert [g["x"].max for g in groups] == [(2, 16), (4, 1)] and groups[0]["y"].min == (1, 4)
    recipe = Recipe(profiles=groups)
    assert Recipe.from_dict(recipe.to_dict()).profiles == groups
    with pytest.raises(InvalidInputError, match="profiles"):
        Recipe.from_dict({"profiles": {"x": 1}})
    with pytest.raises(InvalidInputError, match="--profile"):
        parse_profile_groups([" , "])


def test_drop_blocks_on_a_cache_graph_removes_and_renumbers_the_cache(decoder_onnx, tmp_path):
    """Removing attention 3 and block 5: layers 3 and 5 lose their cache, the other six are
    renumbered 0..5, and prefill + decode equal the torch model with those attentions skipped
    (block 5's MLP goes too, so the reference skips it through a pruned copy of the blocks)."""
    import copy

    from converter.core.kv_cache import step_feeds
    from converter.demos.decoder_lm_cache import DecoderLMWithPast
    from passes.blocks.discovery import find_blocks
    from passes.blocks.rewiring import remove_units

    source = onnx.load(str(decoder_onnx))
    pruned = remove_units(source, find_blocks(source), ["attn3", "block5"])
    layout = CacheLayout.from_json(metadata_value(pruned, KV_CACHE))
    assert layout.num_layers == 6
    assert {i.name for i in pruned.graph.input} >= {"past_key_values.5.value"}
    assert "past_key_values.6.key" not in {i.name for i in pruned.graph.input}
    assert json.loads(metadata_value(pruned, KV_CACHE))["renumbered"] == {
        "3": "removed",
        "4": "3",
        "5": "removed",
        "6": "4",
        "7": "5",
    }
    lm = copy.deepcopy(load())
    del lm.blocks[5]  # block 5 entirely; attention 3 skipped below (its MLP stays)
    reference = DecoderLMWithPast(lm, skip_attention=frozenset({3})).eval()
    names = layout.input_names()
    tokens = prompt_tokens(2, 24, 256)
    runner = TorchRunner(reference, names, layout.output_names())
    onnx_runner = OnnxRunner(pruned)
    prefill = step_feeds(tokens[:, :20], layout.empty_past(2), 0)
    want, got = runner.run(prefill), onnx_runner.run(prefill)
    np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-5, rtol=0)
    past = {p: got[q] for p, q in zip(layout.past_names(), layout.present_names(), strict=True)}
    decode = step_feeds(tokens[:, 20:21], past, 20)
    np.testing.assert_allclose(onnx_runner.run(decode)["logits"], runner.run(decode)["logits"], atol=1e-5, rtol=0)
    check = compare_generations(
        greedy(runner, layout, tokens, 12), greedy(onnx_runner, layout, tokens, 12), ("torch", "pruned"), 24
    )
    assert check.identical


@pytest.mark.parametrize("cache_io_fp32", [False, True])
def test_fp16_puts_the_cache_io_in_fp16_and_keeps_the_logits_fp32(decoder_onnx, cache_io_fp32):
    from passes.manager import PassSpec, run_passes

    spec = PassSpec("precision", {"target": "fp16", "cache_io_fp32": cache_io_fp32})
    model, _ = run_passes(onnx.load(str(decoder_onnx)), [spec], PassContext(opset=17))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    cache = onnx.TensorProto.FLOAT if cache_io_fp32 else onnx.TensorProto.FLOAT16
    assert types["past_key_values.0.key"] == cache and types["present.7.value"] == cache
    assert types["logits"] == onnx.TensorProto.FLOAT and types["input_ids"] == onnx.TensorProto.INT64
    layout = resolve_spec("decoder-lm", task=TASK_WITH_PAST).cache
    check = compare_generations(
        greedy(OnnxRunner(decoder_onnx), layout, prompt_tokens(4, 32, 256), 8),
        greedy(OnnxRunner(model), layout, prompt_tokens(4, 32, 256), 8),
        ("fp32", "fp16"),
        32,
    )
    assert check.identical  # measured: fp16 (weights, cache) keeps these greedy tokens


def test_a_cache_graph_without_our_metadata_gets_consistent_feeds_and_profiles(decoder_onnx):
    """An Optimum-style graph: no trtforge metadata, the layout read from the input names."""
    from converter.pipelines.generation_check import cache_layout, engine_profiles
    from converter.pipelines.sample_inputs import resolve_inputs

    model = onnx.load(str(decoder_onnx))
    del model.metadata_props[:]
    layout = cache_layout(model)
    assert (layout.num_layers, layout.kv_heads, layout.head_dim) == (8, 2, 32)
    sample = resolve_inputs(model, None, None, 2, 3)
    assert sample.source == "synthetic"
    feeds = sample.feeds[0]
    assert feeds["attention_mask"].shape == (3, feeds["past_key_values.0.key"].shape[2] + 1)
    assert OnnxRunner(model).run(feeds)["present.0.key"].shape == (3, 2, 16, 32)
    assert len(engine_profiles(layout, {}, [])) == 2 and engine_profiles(layout, {"x": None}, []) == []


def test_inputs_the_graph_cannot_compute_are_a_one_line_input_error(decoder_onnx):
    """A mask shorter than past + sequence: onnxruntime fails inside the graph; that is the
    inputs' fault (exit 4), not an internal error."""
    layout = resolve_spec("decoder-lm", task=TASK_WITH_PAST).cache
    feeds = {**layout.empty_past(1), "input_ids": np.zeros((1, 4), np.int64)}
    feeds.update(attention_mask=np.ones((1, 2), np.int64), position_ids=np.zeros((1, 4), np.int64))
    with pytest.raises(InvalidInputError, match="onnxruntime failed on inputs"):
        OnnxRunner(decoder_onnx).run(feeds)


def test_live_layers_keep_their_cache_when_a_cast_sits_before_the_output(decoder_onnx):
    """fp16 with fp32 cache I/O puts a Cast between the cache and present.*: still live."""
    from passes.blocks.cache_io import prune_cache
    from passes.manager import PassSpec, run_passes

    spec = PassSpec("precision", {"target": "fp16", "cache_io_fp32": True, "keep_io_types": False})
    model, _ = run_passes(onnx.load(str(decoder_onnx)), [spec], PassContext(opset=17))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.input}
    assert types["past_key_values.0.key"] == onnx.TensorProto.FLOAT  # cache_io_fp32 wins over keep_io_types
    assert prune_cache(model) == {} and len(model.graph.output) == 17


def test_greedy_feeds_the_cache_back_in_its_own_type():
    """Runners hand float outputs back as float32; an fp16 model's cache must go back as fp16."""
    layout = CacheLayout(1, 2, 4, dtype="float16", max_length=16, max_prompt=8)
    seen = []

    class Fp16Model:
        name = "fp16"

        def run(self, feeds):
            seen.append(feeds["past_key_values.0.key"].dtype)
            batch, seq = feeds["input_ids"].shape
            total = feeds["attention_mask"].shape[1]
            cache = np.zeros((batch, 2, total, 4), np.float32)  # as TorchRunner returns it
            return {"logits": np.zeros((batch, seq, 8), np.float32), "present.0.key": cache, "present.0.value": cache}

    greedy(Fp16Model(), layout, np.zeros((2, 3), np.int64), 4)
    assert seen == [np.float16] * 4
