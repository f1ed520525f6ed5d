"""The local engine's rollout (ALGORITHM.md step 1): batched sampling with transformers, then exact scores.

Sampling (`omniopd_verl.runtime.generation`: every response of the step in one batched generation, each
prompt prefilled once for its responses_per_prompt samples) draws from pi_theta itself: temperature
and top-p come from the engine config (1.0 by default) and no other warper a model's
generation_config may carry (top_k=50, repetition penalty) is applied, so the responses are on-policy samples of the distribution the loss differentiates.
After sampling, one teacher-forced pass (`omniopd_verl.runtime.scoring.score_token_ids`, no gradient) gives
each response token's exact full-vocabulary entropy and log-prob from the logits, in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from omniopd_verl.core.seeds import derive_seed
from omniopd_verl.local.data import Problem
from omniopd_verl.runtime.generation import eos_token_ids, pad_token_id, sample_continuations
from omniopd_verl.runtime.scoring import encode_text, score_token_ids


@dataclass
class Rollout:
    """One sampled response and its exact per-token scores (float32 tensors on the CPU, [T])."""

    uid: str
    problem: Problem
    prompt_text: str
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs_T: torch.Tensor
    entropy_T: torch.Tensor
    finished: bool
    """True when the response ended with EOS (False: cut at max_new_tokens)."""


def render_prompts(tokenizer, problems: Sequence[Problem], max_prompt_tokens: int) -> list[tuple[str, list[int]]]:
    """(prompt text, prompt ids) through the chat template; long prompts keep their last tokens."""
    out = []
    for p in problems:
        text = tokenizer.apply_chat_template([dict(m) for m in p.messages], tokenize=False, add_generation_prompt=True)
        ids = encode_text(tokenizer, text)
        if len(ids) > max_prompt_tokens:
            ids = ids[-max_prompt_tokens:]
            text = tokenizer.decode(ids)
        out.append((text, ids))
    return out


def sample_token_ids(
    model,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    pad_token_id: int,
    eos_token_ids: Sequence[int],
    n: int = 1,
    generation_batch_size: int | None = None,
    min_new_tokens: int = 0,
) -> tuple[list[list[int]], list[bool]]:
    """`n` sampled responses per prompt, prompt-major (token ids, cut after the first EOS), and whether each finished.

    Prompt i's samples are drawn with the seed derive_seed(seed, i) and share one prefill of the
    prompt (`omniopd_verl.runtime.generation`), so a batch is a pure function of (weights, prompts, seed):
    that is what makes a resumed run draw the same samples as an uninterrupted one.
    """
    samples = sample_continuations(
        model,
        prompt_ids,
        n=n,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seeds=[derive_seed(seed, i) for i in range(len(prompt_ids))],
        pad_token_id=pad_token_id,
        eos_token_ids=eos_token_ids,
        min_new_tokens=min_new_tokens,
        max_rows=generation_batch_size,
    )
    flat = [s for row in samples for s in row]
    return [s.token_ids for s in flat], [s.finished for s in flat]


def sample_responses(
    model,
    tokenizer,
    problems: Sequence[Problem],
    *,
    responses_per_prompt: int,
    max_new_tokens: int,
    max_prompt_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    uid_prefix: str,
    generation_batch_size: int | None = None,
) -> list[Rollout]:
    """Sample `responses_per_prompt` responses per problem, then score them teacher-forced (exact, fp32).

    All responses of the call are one batched generation; each prompt is prefilled once.
    """
    rendered = render_prompts(tokenizer, problems, max_prompt_tokens)
    rows = [(i, j) for i in range(len(problems)) for j in range(responses_per_prompt)]
    pad = pad_token_id(tokenizer)
    responses, finished = sample_token_ids(
        model,
        [ids for _, ids in rendered],
        n=responses_per_prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        pad_token_id=pad,
        eos_token_ids=eos_token_ids(model, tokenizer),
        generation_batch_size=generation_batch_size,
    )
    prompts = [rendered[i][1] for i, _ in rows]
    # every row samples at least one token, so no response is empty
    was_training = model.training
    model.eval()
    scores = score_token_ids(model, prompts, responses, pad_token_id=pad)
    if was_training:
        model.train()
    return [
        Rollout(
            uid=f"{uid_prefix}{problems[i].pid}-r{j}",
            problem=problems[i],
            prompt_text=rendered[i][0],
            prompt_ids=list(rendered[i][1]),
            response_ids=resp,
            logprobs_T=lp,
            entropy_T=h,
            finished=fin,
        )
        for (i, j), resp, (lp, h), fin in zip(rows, responses, scores, finished, strict=True)
    ]
