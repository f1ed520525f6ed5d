"""Per-token entropy of the student's next-token distribution (ALGORITHM.md step 2).

Two sources:
- `exact_entropy`: full-vocabulary entropy from logits, in float32, a chunk of positions at a time so
  that the float32 copy of a [chunk, V] slice is the largest temporary (a 32k-token x 150k-vocab batch
  would otherwise need ~20 GB just for the softmax).
- `topk_entropy`: from the top-k log-probs a rollout engine returns (vLLM `logprobs=k`), with a bound
  on what the unseen tail can add. It brackets the exact value; its point estimate is the lower bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from omniopd_verl.errors import GuardError


def exact_entropy(logits_NV: torch.Tensor, *, chunk_size: int = 256) -> torch.Tensor:
    """Entropy H = -sum_v p_v log p_v of softmax(logits) over the last dim, in float32.

    Any leading shape is allowed ([B, T, V], [N, V]); the result has the leading shape.
    Runs under no_grad: entropies choose anchors and are never differentiated.
    """
    if logits_NV.dim() < 1:
        raise GuardError(f"exact_entropy: logits must have a vocabulary dimension, got shape {tuple(logits_NV.shape)}")
    if chunk_size < 1:
        raise GuardError(f"exact_entropy: chunk_size must be >= 1, got {chunk_size}")
    lead_shape = logits_NV.shape[:-1]
    flat_NV = logits_NV.detach().reshape(-1, logits_NV.shape[-1])
    out_N = torch.empty(flat_NV.shape[0], dtype=torch.float32, device=flat_NV.device)
    with torch.no_grad():
        for lo in range(0, flat_NV.shape[0], chunk_size):
            logp = torch.log_softmax(flat_NV[lo : lo + chunk_size].float(), dim=-1)
            plogp = logp.exp().mul_(logp)  # two [chunk, V] float32 temporaries at most
            # p * log p with p == 0 is 0 * -inf = nan for -inf logits (masked vocab): count it as 0
            out_N[lo : lo + chunk_size] = -plogp.nan_to_num_(nan=0.0).sum(dim=-1)
            del logp, plogp
    return out_N.reshape(lead_shape)


@dataclass(frozen=True)
class TopKEntropy:
    """Entropy from top-k log-probs: `lower <= exact <= upper`; `estimate` is what schedulers use.

    `tail_mass` is 1 - sum of the top-k probabilities (clamped at 0 against rounding).
    """

    estimate: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    tail_mass: torch.Tensor


def topk_entropy(topk_logprobs_NK: torch.Tensor, vocab_size: int) -> TopKEntropy:
    """Bound the full-vocabulary entropy from the k largest log-probs of each distribution.

    With top-k probabilities p_1 >= ... >= p_k and tail mass r spread over the V - k unseen tokens,
    each unseen token has probability <= p_k, so -log p_j >= -log p_k and
        lower = H_top + r * (-log p_k)                 (tail on as few tokens as possible)
        upper = H_top + r * log((V - k) / r)           (tail uniform over the unseen tokens)
    where H_top = -sum_i p_i log p_i. The point estimate is `lower`: for the peaked distributions of
    a trained LM the tail sits on tokens near p_k, and `lower` is then nearly tight.
    Entries of -inf (fewer than k candidates returned) are treated as missing.
    """
    if topk_logprobs_NK.dim() < 1 or topk_logprobs_NK.shape[-1] < 1:
        raise GuardError(
            f"topk_entropy: need at least one log-prob per position, got shape {tuple(topk_logprobs_NK.shape)}"
        )
    k = topk_logprobs_NK.shape[-1]
    if vocab_size < k:
        raise GuardError(f"topk_entropy: vocab_size ({vocab_size}) is smaller than k ({k})")
    lp = topk_logprobs_NK.detach().double()
    finite = torch.isfinite(lp)
    p = torch.where(finite, lp.exp(), torch.zeros_like(lp))
    h_top = -(torch.where(finite, p * lp, torch.zeros_like(lp))).sum(-1)
    tail = (1.0 - p.sum(-1)).clamp(min=0.0)
    # smallest returned probability: the cap on every unseen token's probability
    p_min = torch.where(finite, p, torch.full_like(p, math.inf)).min(-1).values.clamp(max=1.0)
    unseen = vocab_size - finite.sum(-1).double()
    lower = h_top + tail * (-torch.log(p_min))
    safe_tail = tail.clamp(min=1e-300)
    upper_tail = torch.where(
        (tail > 0) & (unseen > 0), tail * torch.log(unseen.clamp(min=1.0) / safe_tail), torch.zeros_like(tail)
    )
    upper = h_top + upper_tail.clamp(min=0.0)
    upper = torch.maximum(upper, lower)
    return TopKEntropy(estimate=lower.float(), lower=lower.float(), upper=upper.float(), tail_mass=tail.float())
