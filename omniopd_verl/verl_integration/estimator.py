"""The `omniopd` advantage estimator for verl: step 2 of omniopd_verl.advantage (the batch step).

verl's `compute_advantage` calls it as `fn(token_level_rewards, response_mask, config, index, ...)`
with `config` = the `algorithm` DictConfig. The per-row step (`advantage.token_scores`) already ran in
the reward manager: its dense per-token scores sit in `token_level_rewards` (= `rm_scores`, written by
the `omniopd_agent` loop). Options are read from `algorithm.omniopd.{advantage, task_reward_weight}`,
which the shipped YAML interpolates from the top-level `omniopd:` node.

'centered_batch' needs the audited tokens of the batch, passed explicitly as `audit_mask` ([B, T], the
per-row `TokenScores.audit_mask_BT` stacked; the OmniOPD trainer modes pass it): the estimator never
guesses chunk tokens from the scores.
"""

from __future__ import annotations

from typing import Any

import torch

from omniopd_verl.advantage import batch_advantage
from omniopd_verl.config import CENTERED_BATCH, POSTERIOR
from omniopd_verl.errors import ConfigError


def _option(config: Any, key: str, default: Any) -> Any:
    node = config.get("omniopd", None) if config is not None and hasattr(config, "get") else None
    if node is None:
        return default
    return node.get(key, default)


def omniopd_adv_estimator(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    config: Any = None,
    index: Any = None,
    audit_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both [B, T]: the dense OmniOPD scores on response tokens, 0 on padding;
    'centered_batch' minus the batch mean over `audit_mask` (see the module docstring)."""
    from omniopd_verl.verl_integration.fatal import raise_if_reported

    raise_if_reported(token_level_rewards)  # a teacher failed with on_failure='error' (fatal.py)
    mode = _option(config, "advantage", POSTERIOR)
    if audit_mask is None:  # set by the omniopd_sync / cpu_sync trainers (batch_context.py)
        from omniopd_verl.verl_integration.batch_context import BATCH_AUDIT_MASK

        audit_mask = BATCH_AUDIT_MASK.get()
    if mode == CENTERED_BATCH and audit_mask is None:
        raise ConfigError(
            "omniopd.advantage='centered_batch' needs the batch's audited-token mask, and verl passed none "
            "(audit_mask=None): run with an OmniOPD trainer mode that passes it (trainer.v1.trainer_mode="
            "omniopd_sync or cpu_sync), or use advantage 'posterior' or 'centered_prior'"
        )
    advantages_BT = batch_advantage(token_level_rewards, response_mask, mode, audit_mask)
    return advantages_BT, advantages_BT.clone()
