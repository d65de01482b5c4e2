"""Verification by generation: greedy decoding through a cache graph, compared token by token.

One batch of outputs agreeing says little about a decoder: the cache it returns is fed
back for every later token, so an error in `present.*` (a wrong layout, a cache dropped
or mis-sliced by a pass) only shows once the next step reads it. Here each runner (the
torch module with its cache, the ONNX graph in onnxruntime, the engine on a GPU) runs
its own loop: a prefill over the prompts, then one decode step per token, its cache fed
back. The report: per step, the share of prompts whose tokens still agree with the
reference; per prompt, the first step where they differ; per step, the largest logits
difference over the prompts that still agree (the same context, so a fair comparison).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from converter.core.errors import InvalidInputError
from converter.core.kv_cache import CacheLayout, step_feeds
from converter.verification.compare import Runner

Feeds = dict[str, np.ndarray]


@dataclass
class Generation:
    """What one runner generated: tokens [prompts, steps] and the last-position logits per step."""

    tokens: np.ndarray
    logits: list[np.ndarray]


def greedy(runner: Runner, layout: CacheLayout, prompts: np.ndarray, steps: int) -> Generation:
    """`steps` greedy tokens after `prompts` [n, length]: one prefill, then steps - 1 decode calls."""
    if steps < 1 or prompts.shape[1] + steps > layout.max_length:
        raise InvalidInputError(
            f"--generate {steps} after prompts of {prompts.shape[1]} tokens: need 1 <= steps and "
            f"prompt + steps <= the cache's max length {layout.max_length}"
        )
    feeds = step_feeds(prompts, layout.empty_past(prompts.shape[0]), 0)
    tokens, logits = [], []
    for step in range(steps):
        out = runner.run(feeds)
        missing = [n for n in ("logits", *layout.present_names()) if n not in out]
        if missing:
            raise InvalidInputError(f"{runner.name}: outputs {missing[:3]} missing: not a cache graph")
        last = np.asarray(out["logits"])[:, -1].astype(np.float32)
        token = last.argmax(-1)
        tokens.append(token)
        logits.append(last)
        # fed back in the cache's own type: runners hand float outputs back as float32
        past = {
            p: np.asarray(out[q]).astype(layout.numpy_dtype, copy=False)
            for p, q in zip(layout.past_names(), layout.present_names(), strict=True)
        }
        feeds = step_feeds(token[:, None], past, prompts.shape[1] + step)
    return Generation(np.stack(tokens, axis=1), logits)


@dataclass
class GenerationCheck:
    """One candidate's generation against the reference's."""

    reference: str
    candidate: str
    prompts: int
    prompt_tokens: int
    steps: int
    identical: bool  # every prompt's every token equal
    agreement_per_step: list[float]  # share of prompts whose tokens agree up to and including the step
    first_divergent_step: list[int | None]  # per prompt; None: never diverged
    max_logits_error_per_step: list[float | None]  # over prompts that still agreed before the step

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def summary(self) -> str:
        if self.identical:
            return f"{self.steps} greedy tokens identical on {self.prompts} prompts"
        diverged = [s for s in self.first_divergent_step if s is not None]
        return (
            f"{len(diverged)}/{self.prompts} prompts diverge (first at step {min(diverged)}); "
            f"{self.agreement_per_step[-1]:.0%} agree after {self.steps} tokens"
        )


def compare_generations(ref: Generation, cand: Generation, names: tuple[str, str], prompt_tokens: int):
    """Token agreement, first divergence and logits error of `cand` against `ref`."""
    same = ref.tokens == cand.tokens
    agreeing = np.cumprod(same, axis=1).astype(bool)  # [prompts, steps]
    first = [None if row.all() else int(np.argmin(row)) for row in agreeing]
    errors: list[float | None] = []
    for step, (a, b) in enumerate(zip(ref.logits, cand.logits, strict=True)):
        context_same = agreeing[:, step - 1] if step else np.ones(len(a), bool)
        errors.append(float(np.abs(a[context_same] - b[context_same]).max()) if context_same.any() else None)
    return GenerationCheck(
        reference=names[0],
        candidate=names[1],
        prompts=int(ref.tokens.shape[0]),
        prompt_tokens=prompt_tokens,
        steps=int(ref.tokens.shape[1]),
        identical=bool(same.all()),
        agreement_per_step=[round(float(x), 4) for x in agreeing.mean(axis=0)],
        first_divergent_step=first,
        max_logits_error_per_step=errors,
    )
