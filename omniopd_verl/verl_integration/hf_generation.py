"""Batched token-in/token-out sampling with a transformers causal LM, in vLLM's semantics.

The engine of the `hf` rollout backend (hf_rollout.py), kept free of Ray and verl so it can be tested
against a naive one-sequence-at-a-time reference. One call, `generate_batch`, runs a batch of requests
together: left-padded prompts, one prefill, then one forward per new token with the KV cache; each row
stops at its own EOS / stop token / max_tokens. What it honours, as vLLM does:
- `temperature` (0 = greedy), `top_k` (-1 or 0 = off), `top_p` (1 = off; applied after top-k);
- `logprobs`: the sampled tokens' log-probs, `logprobs_mode` 'processed_logprobs' (verl's default: the
  distribution actually sampled from, after temperature, top-k and top-p) or 'raw_logprobs' (the
  model's own log-softmax);
- `prompt_logprobs=k`: vLLM's layout as verl extracts it (`vllm_rollout/utils.py`): one row per prompt
  token, row i = the top-k (by rank) of the raw distribution that predicts token i + 1 (k = 0: the
  actual next token only), a dummy row of zeros last.
Sampling is reproducible per request: each row has its own torch.Generator seeded from the request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    logprobs: bool = True
    prompt_logprobs: int | None = None
    seed: int = 0
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs_mode: str = "processed_logprobs"

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("prompt_ids is empty: the hf rollout needs at least one prompt token")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens} is invalid: allowed >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} is invalid: allowed >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} is invalid: allowed 0 < top_p <= 1")
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(
                f"logprobs_mode={self.logprobs_mode!r} is invalid for the hf rollout: allowed {LOGPROBS_MODES}"
            )
        if self.prompt_logprobs is not None and self.prompt_logprobs < 0:
            raise ValueError(f"prompt_logprobs={self.prompt_logprobs} is invalid: allowed None or >= 0")


@dataclass
class GenerationResult:
    token_ids: list[int]
    log_probs: list[float] | None
    stop_reason: str  # "completed" or "aborted" (verl's TokenOutput values)
    prompt_ids: list[list[int]] | None = None  # prompt_logprobs layout (see the module docstring)
    prompt_logprobs: list[list[float]] | None = None
    extra: dict = field(default_factory=dict)


def request_seed(request_id: str, base_seed: int = 0) -> int:
    """A stable 63-bit seed for a request id (Python's hash() differs between processes)."""
    digest = hashlib.sha256(f"{base_seed}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sampling_logprobs(logits_V: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """log-probs of the distribution vLLM samples from: temperature, then top-k, then top-p (-inf = cut)."""
    logits_V = logits_V.float()
    if temperature > 0:
        logits_V = logits_V / temperature
    if top_k is not None and 0 < top_k < logits_V.shape[-1]:
        kth = torch.topk(logits_V, top_k).values[-1]
        logits_V = logits_V.masked_fill(logits_V < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_V, order_V = torch.sort(logits_V, descending=True)
        probs_V = torch.softmax(sorted_V, dim=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        cut_V = (torch.cumsum(probs_V, dim=-1) - probs_V) >= top_p
        logits_V = logits_V.clone()
        logits_V[order_V[cut_V]] = float("-inf")
    return torch.log_softmax(logits_V, dim=-1)


def _prompt_logprobs(raw_lp_LV: torch.Tensor, ids_L: torch.Tensor, k: int) -> tuple[list, list]:
    """vLLM's prompt_logprobs rows for one unpadded prompt (see the module docstring)."""
    rows_lp = raw_lp_LV[:-1]
    if k == 0:
        nxt = ids_L[1:, None]
        values, ids = rows_lp.gather(-1, nxt), nxt
        width = 1
    else:
        values, ids = rows_lp.topk(k, dim=-1)
        width = k
    return ids.tolist() + [[0] * width], values.tolist() + [[0.0] * width]


@torch.no_grad()
def generate_batch(
    model,
    requests: list[GenerationRequest],
    *,
    eos_token_ids: set[int],
    pad_token_id: int,
    should_abort: Callable[[], bool] | None = None,
) -> list[GenerationResult]:
    """Run `requests` as one batch on `model`'s device; see the module docstring."""
    device = next(model.parameters()).device
    B = len(requests)
    lengths = [len(r.prompt_ids) for r in requests]
    L = max(lengths)
    input_ids_BL = torch.full((B, L), pad_token_id, dtype=torch.long)
    mask_BL = torch.zeros((B, L), dtype=torch.long)
    for b, r in enumerate(requests):  # left padding: every row's next token is at column L
        input_ids_BL[b, L - lengths[b] :] = torch.tensor(r.prompt_ids, dtype=torch.long)
        mask_BL[b, L - lengths[b] :] = 1
    input_ids_BL, mask_BL = input_ids_BL.to(device), mask_BL.to(device)
    position_ids_BL = (mask_BL.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids_BL, attention_mask=mask_BL, position_ids=position_ids_BL, use_cache=True)
    past, logits_BV = out.past_key_values, out.logits[:, -1].float()

    results = []
    for b, r in enumerate(requests):
        res = GenerationResult(token_ids=[], log_probs=[] if r.logprobs else None, stop_reason="completed")
        if r.prompt_logprobs is not None:
            raw_lp_LV = torch.log_softmax(out.logits[b, L - lengths[b] :].float(), dim=-1)
            res.prompt_ids, res.prompt_logprobs = _prompt_logprobs(
                raw_lp_LV.cpu(), input_ids_BL[b, L - lengths[b] :].cpu(), r.prompt_logprobs
            )
        results.append(res)
    del out
    generators = [torch.Generator(device="cpu").manual_seed(r.seed) for r in requests]
    done = [False] * B
    next_pos_B = position_ids_BL[:, -1] + 1
    for _ in range(max(r.max_tokens for r in requests)):
        if should_abort is not None and should_abort():
            for b in range(B):
                if not done[b]:
                    results[b].stop_reason = "aborted"
            break
        next_B = torch.full((B,), pad_token_id, dtype=torch.long)
        logits_cpu_BV = logits_BV.cpu()
        for b, r in enumerate(requests):
            if done[b]:
                continue
            lp_V = sampling_logprobs(logits_cpu_BV[b], r.temperature, r.top_k, r.top_p)
            if r.temperature == 0:
                tok = int(torch.argmax(lp_V))
            else:
                tok = int(torch.multinomial(lp_V.exp(), 1, generator=generators[b]))
            results[b].token_ids.append(tok)
            if r.logprobs:
                if r.logprobs_mode == "raw_logprobs":
                    results[b].log_probs.append(float(torch.log_softmax(logits_cpu_BV[b], -1)[tok]))
                else:
                    results[b].log_probs.append(float(lp_V[tok]))
            next_B[b] = tok
            stop = (tok in eos_token_ids and not r.ignore_eos) or tok in r.stop_token_ids
            if stop or len(results[b].token_ids) >= r.max_tokens:
                done[b] = True
        if all(done):
            break
        mask_BL = torch.cat([mask_BL, torch.ones((B, 1), dtype=torch.long, device=device)], dim=-1)
        out = model(
            input_ids=next_B[:, None].to(device),
            attention_mask=mask_BL,
            position_ids=next_pos_B[:, None],
            past_key_values=past,
            use_cache=True,
        )
        past, logits_BV = out.past_key_values, out.logits[:, -1].float()
        next_pos_B = next_pos_B + 1
    return results
