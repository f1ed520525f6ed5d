"""The local engine's rollout (ALGORITHM.md step 1): batched sampling with transformers, then exact scores.

Sampling draws from pi_theta itself: temperature and top-p come from the engine config (1.0 by
default) and every other warper a model's generation_config may carry (top_k=50, repetition penalty)
is switched off, so the responses are on-policy samples of the distribution the loss differentiates.
After sampling, one teacher-forced pass (`omniopd_verl.student.score_token_ids`, no gradient) gives
each response token's exact full-vocabulary entropy and log-prob from the logits, in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from omniopd_verl.local.data import Problem
from omniopd_verl.student import encode_text, score_token_ids


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


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(x) for x in source)
    return ids


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


@torch.no_grad()
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
    generation_batch_size: int | None = None,
    min_new_tokens: int = 0,
) -> tuple[list[list[int]], list[bool]]:
    """One sampled response per prompt (token ids, cut after the first EOS) and whether it finished.

    The torch RNG is seeded from `seed` first, so a batch is a pure function of (weights, prompts,
    seed): that is what makes a resumed run draw the same samples as an uninterrupted one.
    """
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    eos = set(int(e) for e in eos_token_ids)
    gen_cfg = GenerationConfig(
        do_sample=True,
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=0,
        repetition_penalty=1.0,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        pad_token_id=pad_token_id,
        eos_token_id=sorted(eos) or None,
    )
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    was_training = model.training
    model.eval()
    step = generation_batch_size or len(prompt_ids)
    responses: list[list[int]] = []
    finished: list[bool] = []
    for lo in range(0, len(prompt_ids), step):
        chunk = prompt_ids[lo : lo + step]
        P = max(len(ids) for ids in chunk)
        ids_BP = torch.full((len(chunk), P), pad_token_id, dtype=torch.long)
        mask_BP = torch.zeros((len(chunk), P), dtype=torch.long)
        for b, ids in enumerate(chunk):
            ids_BP[b, P - len(ids) :] = torch.tensor(list(ids))
            mask_BP[b, P - len(ids) :] = 1
        out_BL = model.generate(
            input_ids=ids_BP.to(device), attention_mask=mask_BP.to(device), generation_config=gen_cfg
        ).cpu()
        for b in range(len(chunk)):
            gen = out_BL[b, P:].tolist()
            cut = next((k + 1 for k, tok in enumerate(gen) if tok in eos), None)
            finished.append(cut is not None)
            responses.append(gen[:cut] if cut is not None else gen)
    if was_training:
        model.train()
    return responses, finished


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
    """Sample `responses_per_prompt` responses per problem, then score them teacher-forced (exact, fp32)."""
    rendered = render_prompts(tokenizer, problems, max_prompt_tokens)
    rows = [(i, j) for i in range(len(problems)) for j in range(responses_per_prompt)]
    pad = pad_id(tokenizer)
    prompts = [rendered[i][1] for i, _ in rows]
    responses, finished = sample_token_ids(
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        pad_token_id=pad,
        eos_token_ids=sorted(_eos_ids(model, tokenizer)),
        generation_batch_size=generation_batch_size,
    )
    # generate emits at least one token per row, so no response is empty
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
