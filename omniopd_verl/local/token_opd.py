"""White-box token-level OPD: the paper's main baseline, in the local engine (`local.method: token_opd`).

The verl/tinker formulation of on-policy distillation with teacher logits: on every response token of
the student's own sample, the per-token advantage is the negative sampled-token reverse KL

    A_t = log pi_T(y_t | s_t) - log pi_theta(y_t | s_t)        (pi_theta at sampling time, no gradient)

trained through the same verl policy loss as OmniOPD's chunks (ratio 1 on the single update, so the
gradient is -sum_t A_t grad log pi_theta(y_t | s_t) under the configured aggregation). Every response
token carries teacher signal, so there is no KL anchor (no unaudited token) and no audit.
The teacher must be white-box: the `transformers` teacher the registry builds, whose `token_logprobs`
gives log pi_T from its logits (with the demonstration teacher's steering bias when `options.steer` is
set); local/methods.py (`TokenOPD`) asks it. It costs one teacher forward over the batch per step and no
sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omniopd_verl.core import TokenCredit


def token_opd_credit(
    teacher_logprobs: Sequence[torch.Tensor], student_logprobs: Sequence[torch.Tensor], response_mask_BT: torch.Tensor
) -> TokenCredit:
    """advantage_BT = log pi_T - log pi_theta on every response token (0 on padding); no KL-anchor token."""
    B, T = response_mask_BT.shape
    advantage_BT = torch.zeros((B, T), dtype=torch.float32)
    for b, (t_lp, s_lp) in enumerate(zip(teacher_logprobs, student_logprobs, strict=True)):
        if len(t_lp) != len(s_lp) or len(t_lp) != int(response_mask_BT[b].sum()):
            raise ValueError(f"row {b}: {len(t_lp)} teacher and {len(s_lp)} student log-probs for the response")
        advantage_BT[b, : len(t_lp)] = t_lp.float() - s_lp.float()
    mask = response_mask_BT.bool()
    return TokenCredit(advantage_BT=advantage_BT * mask, audit_mask_BT=mask, unaudited_mask_BT=torch.zeros_like(mask))
