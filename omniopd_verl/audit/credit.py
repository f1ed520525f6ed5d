"""Audits -> per-chunk values -> per-token tensors: the per-row part of the one advantage path.

`chunk_advantages(audits, mode)` gives each chunk its per-row value (ALGORITHM.md step 6):
  'posterior'      pi_hat_k                        (the spec)
  'centered_prior' pi_hat_k - pi_bar_k             (ablation)
`audits_to_token_credit(audits, response_mask_BT, mode)` spreads them over the chunks' tokens through
core.chunk_token_credit, which also guards ranges, overlaps and pi_hat in [0, 1].
The batch mode 'centered_batch' (pi_hat_k minus its batch mean) has per-row value pi_hat (ROW_MODES);
its batch step, and the whole path from audits to the advantage, is `omniopd_verl.advantage`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omniopd_verl.audit.types import ResponseAudit
from omniopd_verl.config import CENTERED_BATCH, CENTERED_PRIOR, POSTERIOR
from omniopd_verl.core import TokenCredit, chunk_token_credit
from omniopd_verl.errors import ConfigError, GuardError

ROW_MODES = {POSTERIOR: POSTERIOR, CENTERED_PRIOR: CENTERED_PRIOR, CENTERED_BATCH: POSTERIOR}
"""Each advantage mode's per-row part ('centered_batch' subtracts its batch mean later, on the batch)."""


def chunk_advantages(audits: Sequence[ResponseAudit], mode: str = POSTERIOR) -> list[list[float]]:
    """One per-row value per chunk, per response, in the audits' order (see the module docstring)."""
    if mode == CENTERED_BATCH:
        raise ConfigError(
            "omniopd.advantage='centered_batch' is a batch mode: its per-row value is pi_hat (ROW_MODES) and its "
            "batch mean is subtracted by omniopd_verl.advantage.batch_advantage; use advantage_from_audits"
        )
    if mode == POSTERIOR:
        return [[c.pi_hat for c in a.chunks] for a in audits]
    if mode == CENTERED_PRIOR:
        return [[c.pi_hat - c.pi_bar for c in a.chunks] for a in audits]
    raise ConfigError(f"omniopd.advantage={mode!r} is invalid: allowed one of {sorted(ROW_MODES)}")


def audits_to_token_credit(
    audits: Sequence[ResponseAudit], response_mask_BT: torch.Tensor, mode: str = POSTERIOR
) -> TokenCredit:
    """Per-token advantage, audit mask and unaudited mask for a left-aligned padded batch.

    Row b of `response_mask_BT` belongs to audits[b] and must have exactly audits[b].response_len ones.
    """
    if response_mask_BT.dim() != 2 or response_mask_BT.shape[0] != len(audits):
        raise GuardError(
            f"response_mask must be [B, T] with B = {len(audits)} audits, got {tuple(response_mask_BT.shape)}"
        )
    lengths = response_mask_BT.bool().sum(dim=1).tolist()
    for b, (a, n) in enumerate(zip(audits, lengths, strict=True)):
        if a.response_len != n:
            raise GuardError(f"row {b} ({a.uid!r}): audited response length {a.response_len} != mask length {n}")
    B = len(audits)
    M = max([len(a.chunks) for a in audits] + [1])
    starts_BM = torch.full((B, M), -1, dtype=torch.long)
    ends_BM = torch.full((B, M), -1, dtype=torch.long)
    pi_hat_BM = torch.zeros((B, M), dtype=torch.float32)
    for b, a in enumerate(audits):
        for m, c in enumerate(a.chunks):
            starts_BM[b, m], ends_BM[b, m], pi_hat_BM[b, m] = c.start, c.end, c.pi_hat
    credit = chunk_token_credit(starts_BM, ends_BM, pi_hat_BM, response_mask_BT)
    if mode == POSTERIOR:
        return credit
    # centred advantages may be negative, which chunk_token_credit's pi_hat guard rejects: reuse its
    # masks and checks, and spread the centred values over the same (already validated) chunks
    advantage_BT = torch.zeros_like(credit.advantage_BT)
    for b, values in enumerate(chunk_advantages(audits, mode)):
        for c, v in zip(audits[b].chunks, values, strict=True):
            advantage_BT[b, c.start : c.end] = v
    return TokenCredit(
        advantage_BT=advantage_BT, audit_mask_BT=credit.audit_mask_BT, unaudited_mask_BT=credit.unaudited_mask_BT
    )
