"""The OmniOPD advantage (ALGORITHM.md step 6): the one function both engines call.

Two pure steps, torch only (no verl), so the local engine imports them exactly as the verl estimator does:

1. `dense_token_scores(credit, task_reward_B, task_reward_weight)` builds the per-token score a
   response earns: the chunk advantage (pi_hat_k, or a centred variant, from
   `omniopd_verl.audit.audits_to_token_credit`) on every token of chunk k, plus lambda * R_task on
   every response token when an optional task reward is mixed in. In verl this tensor is `rm_scores`.
2. `omniopd_advantage(token_level_scores_BT, response_mask_BT)` turns scores into the advantage:
   the scores on response tokens and exactly 0 on padding. With `center_batch_mask_BT` (the
   'centered_batch' ablation, which needs the whole batch) the mean over the masked tokens is
   subtracted on those tokens only. Every chunk has C tokens, so the token mean equals the chunk mean.

The policy-gradient loss with this advantage, aggregated 'seq-mean-token-sum', is
L_chunk = -sum_k pi_hat_k sum_{t in c_k} log pi(y_t | s_t) per sequence (on-policy, ratio 1).
"""

from __future__ import annotations

import torch

from omniopd_verl.core import TokenCredit
from omniopd_verl.errors import GuardError

__all__ = ["dense_token_scores", "omniopd_advantage"]


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


def omniopd_advantage(
    token_level_scores_BT: torch.Tensor,
    response_mask_BT: torch.Tensor,
    *,
    center_batch_mask_BT: torch.Tensor | None = None,
) -> torch.Tensor:
    """Advantage [B, T] float32: the scores on response tokens, 0 on padding (optionally batch-centred).

    No discounting, no whitening, no group baseline: the chunk weight is already a bounded,
    smoothed estimate, and the spec uses it as is.
    """
    if token_level_scores_BT.shape != response_mask_BT.shape or token_level_scores_BT.dim() != 2:
        raise GuardError(
            f"token_level_scores and response_mask must be the same [B, T] shape, got "
            f"{tuple(token_level_scores_BT.shape)} and {tuple(response_mask_BT.shape)}"
        )
    mask_BT = response_mask_BT.bool()
    scores_BT = token_level_scores_BT.detach().float()
    if not torch.isfinite(scores_BT[mask_BT]).all():
        raise GuardError("token_level_scores contain NaN or inf on response tokens")
    advantage_BT = torch.where(mask_BT, scores_BT, torch.zeros_like(scores_BT))
    if center_batch_mask_BT is not None:
        center_BT = center_batch_mask_BT.bool() & mask_BT
        if center_BT.any():
            mean = advantage_BT[center_BT].mean()
            advantage_BT = torch.where(center_BT, advantage_BT - mean, advantage_BT)
    return advantage_BT
