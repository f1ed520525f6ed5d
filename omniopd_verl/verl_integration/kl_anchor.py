"""`omniopd.kl_anchor=topk_ref`: verl's top-k distillation KL to the reference, on unaudited tokens only.

ALGORITHM.md step 7 anchors the UNAUDITED tokens with the exact KL(pi_ref || pi_theta). verl 0.9.1 has
no exact KL (`kl_penalty(..., "full")` raises), and its KL loss (`low_var_kl`, the default anchor) is a
sampled-token k3 over the whole response mask. This option uses verl's distillation path instead, with
the reference model (the student's initial checkpoint) served as the "teacher": the logits processor
computes, per position, sum over the reference's top-k tokens of p_ref (log p_ref - log p_theta) from
the student's full logits (verl's `forward_kl_topk`, clamped at 0, no tail term), and the loss
registered here zeroes it on the audited tokens. The audited-token mask reaches the actor as the
TransferQueue field `omniopd_audit_mask` (written per trajectory by the omniopd_agent loop,
agent_loop.py); verl then aggregates over `response_mask` with `loss_agg_mode` and weighs it with
`distillation.distillation_loss.distillation_loss_coef` (= omniopd.beta, `use_task_rewards=True` keeps
the policy loss with our advantages). The verl keys: omniopd_kl_anchor/topk_ref.yaml.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from omniopd_verl.errors import ConfigError
from omniopd_verl.verl_integration.names import AUDIT_MASK_KEY, TOPK_REF_LOSS_NAME


def _padded_rows(mask: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """[batch, length] bool from a jagged (nested) or padded per-response mask, zero-padded on the right."""
    rows = list(mask.unbind()) if getattr(mask, "is_nested", False) else list(mask)
    if len(rows) != batch:
        raise ConfigError(f"{AUDIT_MASK_KEY} has {len(rows)} rows for a micro-batch of {batch}")
    out = []
    for row in rows:
        row = row.reshape(-1)[:length].bool()
        out.append(F.pad(row, (0, length - row.shape[0])))
    return torch.stack(out)


def unaudited_forward_kl_topk(
    config, distillation_config, model_output: dict, data
) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl's `forward_kl_topk` per-token losses [B, T], set to 0 on the audited tokens."""
    from verl.trainer.distillation.losses import compute_forward_kl_topk

    losses_BT, metrics = compute_forward_kl_topk(
        config=config, distillation_config=distillation_config, model_output=model_output, data=data
    )
    if AUDIT_MASK_KEY not in data.keys():
        raise ConfigError(
            f"omniopd.kl_anchor='topk_ref' needs the audited-token mask {AUDIT_MASK_KEY!r} in the actor's batch, "
            "which the omniopd_agent loop writes (actor_rollout_ref.rollout.agent.default_agent_loop=omniopd_agent)"
        )
    audited_BT = _padded_rows(data[AUDIT_MASK_KEY], losses_BT.shape[0], losses_BT.shape[1]).to(losses_BT.device)
    response_mask = data["response_mask"]
    response_BT = (response_mask.to_padded_tensor(0) if response_mask.is_nested else response_mask).bool()
    keep_BT = response_BT & ~audited_BT
    metrics["kl_anchor/unaudited_token_fraction"] = (keep_BT.sum() / response_BT.sum().clamp_min(1)).item()
    return losses_BT * keep_BT, metrics


def register() -> None:
    """Register the loss under TOPK_REF_LOSS_NAME with use_topk=True (idempotent)."""
    from verl.trainer.distillation.losses import (
        DISTILLATION_LOSS_REGISTRY,
        DistillationLossSettings,
        register_distillation_loss,
    )

    if DISTILLATION_LOSS_REGISTRY.get(TOPK_REF_LOSS_NAME) is not unaudited_forward_kl_topk:
        DISTILLATION_LOSS_REGISTRY.pop(TOPK_REF_LOSS_NAME, None)
        register_distillation_loss(DistillationLossSettings(names=[TOPK_REF_LOSS_NAME], use_topk=True))(
            unaudited_forward_kl_topk
        )
