"""The OmniOPD advantage (ALGORITHM.md step 6): one path from audits to the per-token advantage, every mode.

`advantage_from_audits(audits, response_mask_BT, mode, task_reward_B, task_reward_weight)` is the one
function; the local engine calls it on its whole batch. It is two pure steps, torch only (no verl), so
that an engine that audits row by row and sees the batch only later (verl: the reward manager per
trajectory, the `omniopd` estimator per batch) runs exactly the same code, split at the seam:

1. `token_scores(audits, response_mask_BT, mode, ...)` — per row: the chunk advantage on every token of
   chunk k (`posterior`: pi_hat_k; `centered_prior`: pi_hat_k - pi_bar_k; `centered_batch`: pi_hat_k,
   its batch mean is step 2's), plus lambda * R_task on every response token when a task reward is
   mixed in, and the audited-token mask. In verl the scores are `rm_scores`.
2. `batch_advantage(scores_BT, response_mask_BT, mode, audit_mask_BT)` — per batch: the scores on
   response tokens and exactly 0 on padding; for `centered_batch` the mean over the audited tokens of
   the batch is subtracted on those tokens only (every chunk has C tokens, so the token mean is the
   chunk mean). The audited tokens are given explicitly (`audit_mask_BT`), never guessed from the scores.

Which settings each engine supports is one table, `omniopd_verl.engines.SUPPORT`.
The policy-gradient loss with this advantage, aggregated 'seq-mean-token-sum', is
L_chunk = -sum_k A_k sum_{t in c_k} log pi(y_t | s_t) per sequence (on-policy, ratio 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from omniopd_verl.audit.credit import ROW_MODES, audits_to_token_credit
from omniopd_verl.audit.types import ResponseAudit
from omniopd_verl.config import ADVANTAGE_MODES, CENTERED_BATCH, POSTERIOR
from omniopd_verl.core import TokenCredit
from omniopd_verl.errors import ConfigError, GuardError

__all__ = ["TokenScores", "advantage_from_audits", "batch_advantage", "dense_token_scores", "token_scores"]


@dataclass
class TokenScores:
    """Step 1's output: per-token scores [B, T] and the audited-token mask [B, T] (plus the full credit)."""

    scores_BT: torch.Tensor
    audit_mask_BT: torch.Tensor
    credit: TokenCredit


def _check_mode(mode: str) -> None:
    if mode not in ADVANTAGE_MODES:
        raise ConfigError(f"omniopd.advantage={mode!r} is invalid: allowed one of {list(ADVANTAGE_MODES)}")


def dense_token_scores(
    credit: TokenCredit,
    task_reward_B: torch.Tensor | None = None,
    task_reward_weight: float = 0.0,
) -> torch.Tensor:
    """Per-token scores [B, T]: chunk advantage on chunk tokens + lambda * R_task on every response token.

    `credit` comes from `audits_to_token_credit`; `task_reward_B` is one verified task reward per row
    (required when `task_reward_weight` > 0, ignored when it is 0).
    """
    advantage_BT = credit.advantage_BT.detach().float()
    if task_reward_weight == 0.0:
        return advantage_BT.clone()
    if task_reward_B is None:
        raise GuardError(
            f"omniopd.task_reward_weight={task_reward_weight} needs a task reward per response, but none was given"
        )
    task_B = torch.as_tensor(task_reward_B, dtype=torch.float32, device=advantage_BT.device).reshape(-1)
    if task_B.shape[0] != advantage_BT.shape[0]:
        raise GuardError(f"task_reward_B has {task_B.shape[0]} rows, the batch has {advantage_BT.shape[0]}")
    response_BT = (credit.audit_mask_BT | credit.unaudited_mask_BT).float()
    return advantage_BT + task_reward_weight * task_B.unsqueeze(1) * response_BT


def token_scores(
    audits: Sequence[ResponseAudit],
    response_mask_BT: torch.Tensor,
    mode: str = POSTERIOR,
    task_reward_B: torch.Tensor | None = None,
    task_reward_weight: float = 0.0,
) -> TokenScores:
    """Step 1 (per row; see the module docstring). Row b of `response_mask_BT` belongs to audits[b]."""
    _check_mode(mode)
    if mode == CENTERED_BATCH and task_reward_weight != 0.0:
        raise ConfigError(
            f"omniopd.advantage='centered_batch' with omniopd.task_reward_weight={task_reward_weight} is invalid: "
            "allowed task_reward_weight=0 (centring the scores would subtract the task reward's batch mean too)"
        )
    credit = audits_to_token_credit(audits, response_mask_BT, ROW_MODES[mode])
    scores_BT = dense_token_scores(credit, task_reward_B, task_reward_weight)
    return TokenScores(scores_BT=scores_BT, audit_mask_BT=credit.audit_mask_BT.clone(), credit=credit)


def batch_advantage(
    scores_BT: torch.Tensor,
    response_mask_BT: torch.Tensor,
    mode: str = POSTERIOR,
    audit_mask_BT: torch.Tensor | None = None,
) -> torch.Tensor:
    """Step 2 (per batch): advantage [B, T] float32, the scores on response tokens, 0 on padding;
    `centered_batch` subtracts the mean over `audit_mask_BT` (required in that mode) on those tokens.

    No discounting, no whitening, no group baseline: the chunk weight is already a bounded,
    smoothed estimate, and the spec uses it as is.
    """
    _check_mode(mode)
    if scores_BT.shape != response_mask_BT.shape or scores_BT.dim() != 2:
        raise GuardError(
            f"token scores and response_mask must be the same [B, T] shape, got "
            f"{tuple(scores_BT.shape)} and {tuple(response_mask_BT.shape)}"
        )
    mask_BT = response_mask_BT.bool()
    scores_BT = scores_BT.detach().float()
    if not torch.isfinite(scores_BT[mask_BT]).all():
        raise GuardError("token scores contain NaN or inf on response tokens")
    advantage_BT = torch.where(mask_BT, scores_BT, torch.zeros_like(scores_BT))
    if mode != CENTERED_BATCH:
        return advantage_BT
    if audit_mask_BT is None:
        raise GuardError(
            "omniopd.advantage='centered_batch' needs the audited-token mask of the batch (audit_mask_BT): the "
            "batch mean is taken over the audited tokens, which are never guessed from the scores"
        )
    if audit_mask_BT.shape != scores_BT.shape:
        raise GuardError(f"audit_mask {tuple(audit_mask_BT.shape)} != token scores {tuple(scores_BT.shape)}")
    audited_BT = audit_mask_BT.to(mask_BT.device).bool() & mask_BT
    if audited_BT.any():
        mean = advantage_BT[audited_BT].mean()
        advantage_BT = torch.where(audited_BT, advantage_BT - mean, advantage_BT)
    return advantage_BT


def advantage_from_audits(
    audits: Sequence[ResponseAudit],
    response_mask_BT: torch.Tensor,
    mode: str = POSTERIOR,
    task_reward_B: torch.Tensor | None = None,
    task_reward_weight: float = 0.0,
) -> tuple[torch.Tensor, TokenCredit]:
    """The one function: (advantage [B, T], the token credit with its masks) for a whole batch of audits."""
    scores = token_scores(audits, response_mask_BT, mode, task_reward_B, task_reward_weight)
    advantage_BT = batch_advantage(scores.scores_BT, response_mask_BT, mode, scores.audit_mask_BT)
    return advantage_BT, scores.credit
