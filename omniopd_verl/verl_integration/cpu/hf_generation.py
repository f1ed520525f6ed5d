"""The `hf` rollout's requests, in vLLM's semantics, as calls of the project's one sampling loop.

The engine of the `hf` rollout backend (hf_rollout.py), kept free of Ray and verl. It samples nothing
itself: `generate_batch` maps a batch of vLLM-style requests onto one `generation.sample_continuations`
call (one sample per request, each request its own seed, prefix and sampling parameters) and maps the
samples back. What it honours, as vLLM does:
- `temperature` (0 = greedy), `top_k` (-1 or 0 = off), `top_p` (1 = off; applied after top-k);
- `logprobs`: the sampled tokens' log-probs, `logprobs_mode` 'processed_logprobs' (verl's default: the
  distribution actually sampled from, after temperature, top-k and top-p) or 'raw_logprobs' (the
  model's own log-softmax);
- `stop_token_ids` beside the EOS ids, `ignore_eos`, `max_tokens`; an abort stops every unfinished row
  at the next token with stop_reason 'aborted';
- `prompt_logprobs=k`: vLLM's layout as verl extracts it (`generation.PromptLogprobs`).
Sampling is reproducible per request: the loop seeds a torch.Generator from each request's seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from omniopd_verl.runtime.generation import sample_continuations

LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")
# verl's logprobs_mode -> the sampling loop's `logprobs` kind
_LOGPROB_KIND = {"processed_logprobs": "processed", "raw_logprobs": "raw"}


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


def generate_batch(
    model,
    requests: list[GenerationRequest],
    *,
    eos_token_ids: set[int],
    pad_token_id: int,
    should_abort: Callable[[], bool] | None = None,
) -> list[GenerationResult]:
    """Run `requests` as one batch on `model`'s device; see the module docstring."""
    samples = sample_continuations(
        model,
        [r.prompt_ids for r in requests],
        n=1,
        max_new_tokens=[r.max_tokens for r in requests],
        temperature=[r.temperature for r in requests],
        top_p=[r.top_p for r in requests],
        top_k=[r.top_k for r in requests],
        seeds=[r.seed for r in requests],
        pad_token_id=pad_token_id,
        # EOS is a per-request stop here: a request with ignore_eos runs past it
        stop_token_ids=[(*r.stop_token_ids, *(() if r.ignore_eos else eos_token_ids)) for r in requests],
        logprobs=[_LOGPROB_KIND[r.logprobs_mode] if r.logprobs else None for r in requests],
        prompt_logprobs=[r.prompt_logprobs for r in requests],
        should_abort=should_abort,
    )
    results = []
    for [sample] in samples:
        prompt = sample.prompt_logprobs
        results.append(
            GenerationResult(
                token_ids=sample.token_ids,
                log_probs=sample.log_probs,
                stop_reason="aborted" if sample.aborted else "completed",
                prompt_ids=prompt.token_ids if prompt else None,
                prompt_logprobs=prompt.logprobs if prompt else None,
            )
        )
    return results
