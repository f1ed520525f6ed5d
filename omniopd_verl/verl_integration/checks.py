"""Validation of a composed verl config that runs OmniOPD: the `omniopd:` node and its verl wiring.

`check_verl_config(cfg)` returns the validated OmniOPDConfig or raises ConfigError naming the key,
its value and what is allowed. It runs in `omniopd-verl train` (dry run and launch) before anything
starts, so a bad value fails in seconds rather than after the GPUs have loaded the model.
"""

from __future__ import annotations

from typing import Any

from omniopd_verl.config import CENTERED_BATCH, OmniOPDConfig
from omniopd_verl.errors import ConfigError


def omniopd_config_from_verl(cfg: Any) -> OmniOPDConfig:
    """OmniOPDConfig from the top-level `omniopd:` node of a verl trainer config."""
    node = cfg.get("omniopd", None) if hasattr(cfg, "get") else None
    if node is None:
        raise ConfigError(
            "the verl config has no top-level 'omniopd:' node: compose from omniopd_fsdp / omniopd_megatron "
            "(pkg://omniopd_verl.config) or add one"
        )
    return OmniOPDConfig.from_dict(node)


def _get(cfg: Any, dotted: str) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, dotted, default=None)


def _require(cfg: Any, key: str, allowed: Any, why: str) -> None:
    value = _get(cfg, key)
    ok = value in allowed if isinstance(allowed, (tuple, list, set)) else value == allowed
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid for OmniOPD: allowed {allowed!r} ({why})")


def _check_topk_ref(cfg: Any, omniopd: OmniOPDConfig) -> None:
    """omniopd.kl_anchor=topk_ref: the verl keys omniopd_kl_anchor/topk_ref.yaml sets (kl_anchor.py)."""
    from omniopd_verl.verl_integration.names import TOPK_REF_LOSS_NAME

    why = "omniopd.kl_anchor='topk_ref' (add +omniopd_kl_anchor=topk_ref; `omniopd-verl train` adds it)"
    _require(cfg, "distillation.enabled", True, why)
    _require(cfg, "distillation.distillation_loss.loss_mode", TOPK_REF_LOSS_NAME, why)
    _require(cfg, "distillation.distillation_loss.topk", omniopd.kl_topk, why + "; = omniopd.kl_topk")
    _require(cfg, "distillation.distillation_loss.use_task_rewards", True, why + "; keeps the chunk advantages")
    _require(cfg, "distillation.distillation_loss.use_policy_gradient", False, why)
    _require(cfg, "actor_rollout_ref.actor.use_kl_loss", False, why + "; the anchor replaces verl's KL loss")
    _require(cfg, "algorithm.use_kl_in_reward", False, why)
    coef = _get(cfg, "distillation.distillation_loss.distillation_loss_coef")
    if coef is None or abs(float(coef) - omniopd.beta) > 1e-12:
        raise ConfigError(
            f"distillation.distillation_loss.distillation_loss_coef={coef!r} is invalid for OmniOPD: allowed "
            f"{omniopd.beta!r} (= omniopd.beta with kl_anchor='topk_ref'; the overlay interpolates it)"
        )
    teachers = _get(cfg, "distillation.teacher_models") or {}
    model = _get(cfg, "actor_rollout_ref.model.path")
    paths = [t.get("model_path") for t in teachers.values()] if hasattr(teachers, "values") else []
    if paths != [model]:
        raise ConfigError(
            f"distillation.teacher_models model_path={paths!r} is invalid for omniopd.kl_anchor='topk_ref': allowed "
            f"exactly one teacher with model_path={model!r} (the reference is the student's initial checkpoint)"
        )


def check_kl_anchor_wiring(cfg: Any, omniopd: OmniOPDConfig) -> None:
    """The cheap part of the kl_anchor checks, run in the workers too (a plain `main_ppo` launch):
    omniopd.kl_anchor=topk_ref without the overlay would otherwise silently train with no anchor."""
    from omniopd_verl.verl_integration.names import TOPK_REF_LOSS_NAME

    mode = _get(cfg, "distillation.distillation_loss.loss_mode") if _get(cfg, "distillation.enabled") else None
    if omniopd.kl_anchor == "topk_ref" and mode != TOPK_REF_LOSS_NAME:
        raise ConfigError(
            f"omniopd.kl_anchor='topk_ref' with distillation.distillation_loss.loss_mode={mode!r} (distillation "
            f"enabled={_get(cfg, 'distillation.enabled')!r}) is invalid: allowed loss_mode={TOPK_REF_LOSS_NAME!r}, "
            "enabled=True; add the overlay +omniopd_kl_anchor=topk_ref (`omniopd-verl train` adds it)"
        )
    if omniopd.kl_anchor == "low_var_kl" and mode == TOPK_REF_LOSS_NAME:
        raise ConfigError(
            f"distillation.distillation_loss.loss_mode={mode!r} is invalid with omniopd.kl_anchor='low_var_kl': "
            "allowed omniopd.kl_anchor='topk_ref' (that loss is its anchor)"
        )


def check_run_wiring(cfg: Any, omniopd: OmniOPDConfig) -> None:
    """What makes a run train on something other than OmniOPD, or audit nothing, without any error: run in
    every process that loads the config (driver, agent-loop and reward workers), since `main_ppo` launched
    directly runs none of the CLI's checks."""
    from omniopd_verl.verl_integration.names import ESTIMATOR_NAME, REWARD_MANAGER_NAME

    estimator = _get(cfg, "algorithm.adv_estimator")
    manager = _get(cfg, "reward.reward_manager.name")
    if manager in (REWARD_MANAGER_NAME, "OmniOPDRewardManager") and estimator != ESTIMATOR_NAME:
        raise ConfigError(
            f"algorithm.adv_estimator={estimator!r} is invalid with reward.reward_manager.name={manager!r}: allowed "
            f"{ESTIMATOR_NAME!r} (another estimator would train on OmniOPD's dense scores as if they were its own)"
        )
    response_length = _get(cfg, "data.max_response_length")
    if isinstance(response_length, int) and omniopd.chunk_len > response_length:
        raise ConfigError(
            f"omniopd.chunk_len={omniopd.chunk_len} is invalid with data.max_response_length={response_length}: "
            f"allowed chunk_len <= {response_length} (no chunk of C tokens fits in a response, so nothing would "
            "ever be audited)"
        )


def check_verl_config(cfg: Any) -> OmniOPDConfig:
    """Validate the omniopd node and every verl key OmniOPD relies on."""
    from omniopd_verl.verl_integration.names import (
        AGENT_LOOP_NAME,
        CPU_TRAINER_MODE,
        ESTIMATOR_NAME,
        REWARD_MANAGER_NAME,
        SYNC_TRAINER_MODE,
    )

    omniopd = omniopd_config_from_verl(cfg)
    _require(cfg, "algorithm.adv_estimator", ESTIMATOR_NAME, "the dense chunk scores need the omniopd estimator")
    _require(cfg, "trainer.use_v1", True, "only verl's v1 trainer keeps the per-token rm_scores the agent loop writes")
    _require(
        cfg,
        "trainer.v1.trainer_mode",
        (SYNC_TRAINER_MODE, CPU_TRAINER_MODE),
        "verl's sync trainer plus OmniOPD's audit/* and teacher/* step metrics; cpu_sync on CPU",
    )
    _require(
        cfg,
        "actor_rollout_ref.rollout.agent.default_agent_loop",
        AGENT_LOOP_NAME,
        "the omniopd_agent loop collects the student's log-probs and entropies",
    )
    _require(cfg, "actor_rollout_ref.rollout.calculate_log_probs", True, "pi_bar needs the rollout log-probs")
    source = _get(cfg, "reward.reward_manager.source")
    name = _get(cfg, "reward.reward_manager.name")
    if not (
        (source == "register" and name == REWARD_MANAGER_NAME)
        or (source == "importlib" and name == "OmniOPDRewardManager")
    ):
        raise ConfigError(
            f"reward.reward_manager.source={source!r} name={name!r} is invalid for OmniOPD: allowed "
            f"source='register' name='{REWARD_MANAGER_NAME}' (the audit runs in the reward manager)"
        )
    if _get(cfg, "reward.reward_model.enable") and not _get(cfg, "reward.reward_model.enable_resource_pool"):
        raise ConfigError(
            "reward.reward_model.enable=True without enable_resource_pool is invalid for OmniOPD: verl then "
            "scores in a colocated batch after the rollout and never streams trajectories to the reward manager"
        )
    if _get(cfg, "reward.reward_model.enable") and _get(cfg, "reward.custom_reward_function.path") is None:
        raise ConfigError(
            "reward.custom_reward_function.path=None is invalid with reward.reward_model.enable=True for OmniOPD: "
            "verl 0.9.1 only calls the reward manager when a custom reward function is set"
        )
    _require(cfg, "actor_rollout_ref.actor.loss_agg_mode", omniopd.loss_agg_mode, "must match omniopd.loss_agg_mode")
    check_kl_anchor_wiring(cfg, omniopd)
    check_run_wiring(cfg, omniopd)
    if omniopd.kl_anchor == "topk_ref":
        _check_topk_ref(cfg, omniopd)
    elif omniopd.beta > 0:
        _require(cfg, "actor_rollout_ref.actor.use_kl_loss", True, "omniopd.beta > 0 needs verl's KL loss")
        coef = _get(cfg, "actor_rollout_ref.actor.kl_loss_coef")
        if coef is None or abs(float(coef) - omniopd.beta) > 1e-12:
            raise ConfigError(
                f"actor_rollout_ref.actor.kl_loss_coef={coef!r} is invalid for OmniOPD: allowed {omniopd.beta!r} "
                "(= omniopd.beta; the shipped configs interpolate it, set omniopd.beta instead)"
            )
    from omniopd_verl.engines import check_engine_support

    check_engine_support(omniopd, "verl")  # the one table of what each engine supports
    if omniopd.advantage == CENTERED_BATCH:
        if _get(cfg, "algorithm.use_kl_in_reward"):
            raise ConfigError(
                "algorithm.use_kl_in_reward=True is invalid with omniopd.advantage='centered_batch': allowed False"
            )
    return omniopd
