"""Teacher-forced scoring of finished (prompt, response) pairs with a transformers causal LM.

For every response token y_t this returns log pi_theta(y_t | s_t) and the exact full-vocabulary
entropy H(pi_theta(. | s_t)) (core.exact_entropy), which is what the Auditor needs (ALGORITHM.md
steps 2 and 5). Used by `omniopd-verl audit` and reusable by the local engine.

Layout: each row is left-padded as [pad.., prompt, response] so that every response ends at the last
position; the model is asked only for the last max(T)+1 positions' logits (`logits_to_keep`, where
the model supports it), so the [B, L, V] logits of the prompts are never materialised. Position ids
are derived from the attention mask, so left padding does not shift positions. No gradients.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from omniopd_verl.core import exact_entropy
from omniopd_verl.errors import ConfigError
from omniopd_verl.runtime.generation import pad_token_id

Prompt = str | Sequence[Mapping[str, Any]]


@dataclass
class ScoredResponse:
    """One teacher-forced (prompt, response): token ids, per-token log-probs and entropies (float32, [T])."""

    prompt_text: str
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs_T: torch.Tensor
    entropy_T: torch.Tensor


def render_prompt(tokenizer, prompt: Prompt) -> str:
    """A string is used as is (it is what the student saw); chat messages go through the chat template
    with add_generation_prompt=True, so the response continues a fresh assistant turn."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ConfigError("the prompt is a list of chat messages but the student's tokenizer has no chat template")
        return tokenizer.apply_chat_template([dict(m) for m in prompt], tokenize=False, add_generation_prompt=True)
    raise ConfigError(f"prompt={prompt!r} is invalid: allowed a string or a list of chat messages")


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without added special tokens (a chat template already carries its own)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# transformers sets tokenizer.model_max_length to int(1e30) when a tokenizer records no limit
_NO_TOKENIZER_LIMIT = 10**9


def context_limit(model_config, tokenizer=None) -> int | None:
    """The longest prompt + response the student can score: the smaller of the model's
    max_position_embeddings and the tokenizer's model_max_length (when either is recorded); None = unknown."""
    limits = []
    positions = getattr(model_config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < _NO_TOKENIZER_LIMIT:
        limits.append(tok_limit)
    return min(limits) if limits else None


def too_long(prompt_ids: Sequence[int], response_ids: Sequence[int], limit: int | None) -> str | None:
    """Why (prompt, response) does not fit the student's context, or None when it fits."""
    total = len(prompt_ids) + len(response_ids)
    if limit is None or total <= limit:
        return None
    return (
        f"prompt + response is {total} tokens ({len(prompt_ids)} + {len(response_ids)}), beyond the "
        f"student's context of {limit} tokens"
    )


def encode_pair(tokenizer, prompt: Prompt, response: str) -> tuple[str, list[int], list[int]]:
    """(prompt text, prompt ids, response ids) exactly as `score_responses` tokenizes them."""
    prompt_text = render_prompt(tokenizer, prompt)
    return prompt_text, encode_text(tokenizer, prompt_text), encode_text(tokenizer, response)


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return False


@torch.no_grad()
def score_token_ids(
    model,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int = 0,
    max_batch_tokens: int = 8192,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(logprobs_T, entropy_T) per row, both float32 on the CPU, for token-id inputs.

    Rows are grouped by length into batches of at most `max_batch_tokens` padded tokens (a single row
    longer than that runs alone). Every prompt needs at least one token: y_0 is predicted from it.
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    for i, p in enumerate(prompt_ids):
        if len(p) == 0:
            raise ConfigError(f"row {i}: the prompt has no tokens; the first response token needs a context")
    device = next(model.parameters()).device
    keep_arg = _accepts_logits_to_keep(model)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(prompt_ids)
    batch: list[int] = []

    def flush() -> None:
        if not batch:
            return
        lengths = [len(prompt_ids[i]) + len(response_ids[i]) for i in batch]
        L = max(lengths)
        max_T = max(len(response_ids[i]) for i in batch)
        ids_BL = torch.full((len(batch), L), pad_token_id, dtype=torch.long)
        mask_BL = torch.zeros((len(batch), L), dtype=torch.long)
        for b, i in enumerate(batch):
            row = list(prompt_ids[i]) + list(response_ids[i])
            ids_BL[b, L - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask_BL[b, L - len(row) :] = 1
        position_ids_BL = (mask_BL.cumsum(-1) - 1).clamp(min=0)
        keep = max_T + 1  # logits at positions L-keep .. L-1 cover every row's response predictions
        kwargs = {"logits_to_keep": keep} if keep_arg else {}
        logits = model(
            input_ids=ids_BL.to(device),
            attention_mask=mask_BL.to(device),
            position_ids=position_ids_BL.to(device),
            use_cache=False,
            **kwargs,
        ).logits
        logits_BKV = logits[:, -keep:, :]
        for b, i in enumerate(batch):
            T = len(response_ids[i])
            if T == 0:
                out[i] = (torch.zeros(0), torch.zeros(0))
                continue
            # token y_j sits at kept index keep - T + j and is predicted by the logits one before it
            rows_TV = logits_BKV[b, keep - T - 1 : keep - 1, :]
            logp_TV = torch.log_softmax(rows_TV.float(), dim=-1)
            targets_T = torch.tensor(list(response_ids[i]), dtype=torch.long, device=logp_TV.device)
            logprobs_T = logp_TV.gather(-1, targets_T.unsqueeze(-1)).squeeze(-1)
            out[i] = (logprobs_T.cpu(), exact_entropy(rows_TV).cpu())
        batch.clear()

    for i in order:
        longest = max(
            [len(prompt_ids[j]) + len(response_ids[j]) for j in batch] + [len(prompt_ids[i]) + len(response_ids[i])]
        )
        if batch and longest * (len(batch) + 1) > max_batch_tokens:
            flush()
        batch.append(i)
    flush()
    return out  # type: ignore[return-value]


def score_responses(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    *,
    max_batch_tokens: int = 8192,
) -> list[ScoredResponse]:
    """Teacher-force each (prompt, response text) through the student: exact entropies and log-probs.

    The response is tokenized on its own (as the student would have generated it after the prompt),
    without special tokens. A pair longer than the student's context (`context_limit`) raises
    ConfigError naming the row and the lengths: positions past it would be scored without a word.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    encoded = [encode_pair(tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
    prompt_texts = [e[0] for e in encoded]
    prompt_ids = [e[1] for e in encoded]
    response_ids = [e[2] for e in encoded]
    limit = context_limit(getattr(model, "config", None), tokenizer)
    for i, (p_ids, r_ids) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        why = too_long(p_ids, r_ids, limit)
        if why:
            raise ConfigError(f"row {i}: {why}")
    pad = pad_token_id(tokenizer)
    scored = score_token_ids(model, prompt_ids, response_ids, pad_token_id=pad, max_batch_tokens=max_batch_tokens)
    return [
        ScoredResponse(prompt_text=pt, prompt_ids=pi, response_ids=ri, logprobs_T=lp, entropy_T=h)
        for pt, pi, ri, (lp, h) in zip(prompt_texts, prompt_ids, response_ids, scored, strict=True)
    ]
