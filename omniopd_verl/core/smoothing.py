"""Dirichlet-multinomial smoothing (ALGORITHM.md step 5).

pi_bar_k = exp(mean_{t in c_k} log pi_theta(y_t | s_t))   the student's geometric-mean token probability
pi_hat_k = (k_sem + alpha * pi_bar_k) / (N + alpha)       the chunk weight, stop-gradient
"""

from __future__ import annotations

import torch

from omniopd_verl.errors import GuardError


def chunk_pi_bar(chunk_logprobs_MC: torch.Tensor, mask_MC: torch.Tensor | None = None) -> torch.Tensor:
    """exp(mean log-prob) of each chunk's tokens, detached. [M, C] (+ optional bool mask) -> [M]."""
    lp = chunk_logprobs_MC.detach().double()
    if mask_MC is None:
        mean = lp.mean(dim=-1)
    else:
        m = mask_MC.to(lp.dtype)
        n = m.sum(dim=-1)
        if (n == 0).any():
            raise GuardError("chunk_pi_bar: a chunk has no tokens under its mask")
        mean = (lp * m).sum(dim=-1) / n
    if torch.isnan(mean).any() or (mean > 1e-6).any():
        raise GuardError("chunk log-probs must be <= 0 and not NaN (are these logits instead of log-probs?)")
    return (
        mean.clamp(max=0.0)
        .exp()
        .to(chunk_logprobs_MC.dtype if chunk_logprobs_MC.is_floating_point() else torch.float32)
    )


def dirichlet_posterior_mean(k_sem: torch.Tensor, pi_bar: torch.Tensor, samples: int, alpha: float) -> torch.Tensor:
    """pi_hat = (k_sem + alpha * pi_bar) / (N + alpha), detached, checked to lie in [0, 1] (pi_bar: the prior
    mean of chunk_pi_bar)."""
    if samples < 1:
        raise GuardError(f"samples (N) must be >= 1, got {samples}")
    if not alpha > 0:
        raise GuardError(f"alpha must be > 0, got {alpha}")
    k = k_sem.detach().double()
    prior = pi_bar.detach().double()
    if (k < 0).any() or (k > samples + 1e-9).any():
        raise GuardError(f"k_sem must lie in [0, N={samples}], got min {k.min().item()} max {k.max().item()}")
    if (prior < 0).any() or (prior > 1 + 1e-9).any():
        raise GuardError(
            f"pi_bar (the prior mean) must lie in [0, 1], got min {prior.min().item()} max {prior.max().item()}"
        )
    pi_hat = (k + alpha * prior) / (samples + alpha)
    if torch.isnan(pi_hat).any() or (pi_hat < 0).any() or (pi_hat > 1 + 1e-9).any():
        raise GuardError("pi_hat left [0, 1]")
    out_dtype = k_sem.dtype if k_sem.is_floating_point() else torch.float32
    return pi_hat.clamp(0.0, 1.0).to(out_dtype)
