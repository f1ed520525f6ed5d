"""Chunk weights -> per-token tensors for a padded batch (ALGORITHM.md steps 6 and 7).

The chunk objective is an advantage of pi_hat_k on every token of chunk k and 0 elsewhere; the KL
anchor covers the response tokens that no chunk audited.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omniopd_verl.errors import GuardError


@dataclass(frozen=True)
class TokenCredit:
    """Per-token view of one batch's audits. All [B, T], aligned with the response tokens."""

    advantage_BT: torch.Tensor  # float: pi_hat of the token's chunk, 0 outside chunks and on padding
    audit_mask_BT: torch.Tensor  # bool: token lies in an audited chunk
    unaudited_mask_BT: torch.Tensor  # bool: response token outside every chunk (the KL anchor's tokens)


def chunk_token_credit(
    starts_BM: torch.Tensor,
    ends_BM: torch.Tensor,
    pi_hat_BM: torch.Tensor,
    response_mask_BT: torch.Tensor,
) -> TokenCredit:
    """Spread chunk weights over their tokens.

    starts_BM / ends_BM: chunk [start, end) in response-token offsets, -1 where a row has fewer than M
    chunks. pi_hat_BM: pi_hat per chunk (no gradient). response_mask_BT: 1 on real response tokens;
    responses are left-aligned (verl's layout), so a row's length is its mask sum.
    Guards: chunks inside the response, non-empty, non-overlapping; weights in [0, 1], no gradient.
    """
    if not (starts_BM.shape == ends_BM.shape == pi_hat_BM.shape) or starts_BM.dim() != 2:
        raise GuardError(
            f"starts, ends and weights must share one [B, M] shape, got {tuple(starts_BM.shape)}, "
            f"{tuple(ends_BM.shape)}, {tuple(pi_hat_BM.shape)}"
        )
    if response_mask_BT.dim() != 2 or response_mask_BT.shape[0] != starts_BM.shape[0]:
        raise GuardError(
            f"response_mask must be [B, T] with B = {starts_BM.shape[0]}, got {tuple(response_mask_BT.shape)}"
        )
    if pi_hat_BM.requires_grad:
        raise GuardError("chunk weights (pi_hat) must be stop-gradient, but they require grad")
    B, T = response_mask_BT.shape
    device = response_mask_BT.device
    starts = starts_BM.to(device=device, dtype=torch.long)
    ends = ends_BM.to(device=device, dtype=torch.long)
    present_BM = starts >= 0
    lengths_B1 = response_mask_BT.bool().sum(dim=1, keepdim=True)
    if present_BM.any():
        w = pi_hat_BM[present_BM]
        if torch.isnan(w).any() or (w < 0).any() or (w > 1).any():
            raise GuardError(f"chunk weights must lie in [0, 1], got min {w.min().item()} max {w.max().item()}")
        bad = present_BM & ((ends <= starts) | (ends > lengths_B1))
        if bad.any():
            b, m = bad.nonzero()[0].tolist()
            raise GuardError(
                f"row {b} chunk {m} = [{starts[b, m].item()}, {ends[b, m].item()}) is empty or outside "
                f"the response of length {lengths_B1[b, 0].item()}"
            )
    t_11T = torch.arange(T, device=device).view(1, 1, T)
    in_chunk_BMT = present_BM.unsqueeze(-1) & (t_11T >= starts.unsqueeze(-1)) & (t_11T < ends.unsqueeze(-1))
    cover_BT = in_chunk_BMT.sum(dim=1)
    if (cover_BT > 1).any():
        b, t = (cover_BT > 1).nonzero()[0].tolist()
        raise GuardError(f"row {b}: chunks overlap at response token {t}")
    audit_mask_BT = cover_BT > 0
    w_BM1 = pi_hat_BM.detach().to(device=device, dtype=torch.float32).unsqueeze(-1)
    advantage_BT = (in_chunk_BMT.float() * w_BM1).sum(dim=1)
    unaudited_mask_BT = response_mask_BT.bool() & ~audit_mask_BT
    return TokenCredit(advantage_BT=advantage_BT, audit_mask_BT=audit_mask_BT, unaudited_mask_BT=unaudited_mask_BT)
