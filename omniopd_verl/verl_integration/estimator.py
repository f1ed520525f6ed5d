"""The `omniopd` advantage estimator for verl: a thin wrapper over omniopd_verl.advantage.

verl's `compute_advantage` calls it as `fn(token_level_rewards, response_mask, config, index, ...)`
with `config` = the `algorithm` DictConfig. The dense per-token scores already sit in
`token_level_rewards` (= `rm_scores`, written by the `omniopd_agent` loop from the reward manager's
audit). Options are read from `algorithm.omniopd.{advantage, task_reward_weight}`, which the shipped
YAML interpolates from the top-level `omniopd:` node.
"""

from __future__ import annotations

from typing import Any

import torch

from omniopd_verl.advantage import omniopd_advantage
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
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both [B, T]: the dense OmniOPD scores on response tokens, 0 on padding.

    'centered_batch' subtracts the batch mean of pi_hat over the chunk tokens, found as the tokens with
    a positive score: pi_hat > 0 always (alpha > 0, pi_bar > 0), and nothing else is added to the
    scores when that mode is allowed (no task reward, no in-reward KL; `checks.check_verl_config`).
    """
    from omniopd_verl.verl_integration.fatal import raise_if_reported

    raise_if_reported(token_level_rewards)  # a teacher failed with on_failure='error' (fatal.py)
    mode = _option(config, "advantage", "posterior")
    center_mask_BT = None
    if mode == "centered_batch":
        if float(_option(config, "task_reward_weight", 0.0)) != 0.0:
            raise ConfigError(
                "omniopd.advantage='centered_batch' cannot be combined with omniopd.task_reward_weight != 0 in "
                "verl: the estimator finds chunk tokens by their positive score"
            )
        center_mask_BT = (token_level_rewards > 0) & response_mask.bool()
    advantages_BT = omniopd_advantage(token_level_rewards, response_mask, center_batch_mask_BT=center_mask_BT)
    return advantages_BT, advantages_BT.clone()
