"""Soft acceptance (ALGORITHM.md step 4): k_sem = sum_j phi(student chunk, teacher sample j)."""

from __future__ import annotations

import torch

from omniopd_verl.errors import GuardError


def soft_acceptance(similarity_MN: torch.Tensor, samples: int | None = None) -> torch.Tensor:
    """Sum the N similarities of each chunk: [..., N] in [0, 1] -> k_sem [...] in [0, N].

    `samples` (N), when given, is checked against the last dimension: a missing teacher sample must be
    retried or reported upstream, never scored as 0 here.
    """
    if similarity_MN.dim() < 1:
        raise GuardError(f"similarity must have a samples dimension, got shape {tuple(similarity_MN.shape)}")
    if samples is not None and similarity_MN.shape[-1] != samples:
        raise GuardError(f"expected {samples} teacher samples per chunk, got {similarity_MN.shape[-1]}")
    if similarity_MN.numel() and (
        torch.isnan(similarity_MN).any() or similarity_MN.min() < 0.0 or similarity_MN.max() > 1.0
    ):
        raise GuardError(
            f"similarities must lie in [0, 1], got min {similarity_MN.min().item()} max {similarity_MN.max().item()}"
        )
    return similarity_MN.sum(dim=-1)
