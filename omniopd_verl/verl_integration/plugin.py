"""verl's `verl.plugins` entry point: registers OmniOPD in every process that runs `import verl`.

verl 0.9.1 loads every `verl.plugins` entry point inside `import verl` (driver, TaskRunner, agent-loop,
reward-loop and FSDP/Megatron workers alike) and swallows any exception at DEBUG level. So this
module does only cheap registrations, and makes a failure loud in three ways:
- it catches the exception, keeps it and logs it at ERROR level (visible in every worker's stderr);
- `self_check()` (self_check.py, re-exported here) re-imports the pieces and raises a PluginError naming the cause; the train CLI,
  the reward manager and the agent loop call it;
- the shipped YAML resolves `${omniopd_verl.resource:...}` through a resolver registered here, and
  the resolver runs `self_check()`: a process whose registration failed cannot even resolve the config.

Registered here (names in names.py):
- advantage estimator `omniopd` (verl.trainer.ppo.core_algos.register_adv_est);
- distillation loss `omniopd_forward_kl_topk_unaudited` (omniopd.kl_anchor=topk_ref, kl_anchor.py);
- reward manager `omniopd` (verl.experimental.reward_loop.reward_manager.register);
- the CPU platform `cpu` (selected with VERL_PLATFORM=cpu), the `hf` (transformers) rollout backend,
  the v1 trainer modes `omniopd_sync` and `cpu_sync`, and verl's FSDP engines for device "cpu"
  (trainers.py, and the CPU room cpu/: platform.py, hf_rollout.py, trainer.py); in CPU mode (VERL_PLATFORM=cpu) only, the hf rollout
  also under the name `sglang`, as the reference "teacher" engine of omniopd.kl_anchor=topk_ref
  (verl accepts only vllm/sglang teachers; a deviation: that "sglang" is the transformers rollout);
- OmegaConf resolver `omniopd_verl.resource:<file>` -> absolute path of a file shipped in
  `omniopd_verl/config/` (used for `actor_rollout_ref.rollout.agent.agent_loop_config_path`, which
  registers the `omniopd_agent` loop in the agent-loop workers without importing verl's agent-loop
  module, ~5 s, into every process that imports verl).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omniopd_verl.errors import PluginError
from omniopd_verl.verl_integration.names import (
    CPU_PLATFORM_NAME,
    CPU_TEACHER_ENGINE_ALIAS,
    ESTIMATOR_NAME,
    HF_ROLLOUT_NAME,
    RESOLVER_NAME,
    REWARD_MANAGER_NAME,
)
from omniopd_verl.verl_integration.self_check import record_registration_error, self_check

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"

logger = logging.getLogger("omniopd_verl.verl_plugin")


def config_resource(name: str) -> str:
    """Absolute path of a file shipped in omniopd_verl/config/, after checking the registrations."""
    self_check()
    path = CONFIG_DIR / str(name)
    if not path.is_file():
        raise PluginError(f"${{{RESOLVER_NAME}:{name}}}: no such file in {CONFIG_DIR}")
    return str(path)


def _load_hf_replica():
    from omniopd_verl.verl_integration.cpu.hf_rollout import HFRolloutReplica

    return HFRolloutReplica


def register_runtime() -> None:
    """CPU platform, `hf` rollout, trainer modes, CPU engines (idempotent)."""
    from verl.plugin.platform.platform_manager import PlatformRegistry
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from omniopd_verl.verl_integration import verl_private
    from omniopd_verl.verl_integration.cpu.platform import PlatformCPU

    PlatformRegistry.register(platform=CPU_PLATFORM_NAME)(PlatformCPU)
    RolloutReplicaRegistry.register(HF_ROLLOUT_NAME, _load_hf_replica)
    verl_private.check("_ROLLOUT_REGISTRY")
    from verl.workers.rollout import base as rollout_base

    # no public registration for the in-worker adapter (verl_private.py)
    rollout_base._ROLLOUT_REGISTRY[(HF_ROLLOUT_NAME, "async")] = (
        "omniopd_verl.verl_integration.cpu.hf_rollout.HFServerAdapter"
    )
    if os.environ.get("VERL_PLATFORM") == CPU_PLATFORM_NAME:
        # kl_anchor=topk_ref on CPU: verl accepts only vllm/sglang teacher engines
        # (workers/config/distillation.py), so in CPU mode the hf rollout serves the reference as "sglang"
        RolloutReplicaRegistry.register(CPU_TEACHER_ENGINE_ALIAS, _load_hf_replica)
        rollout_base._ROLLOUT_REGISTRY[(CPU_TEACHER_ENGINE_ALIAS, "async")] = (
            "omniopd_verl.verl_integration.cpu.hf_rollout.HFServerAdapter"
        )
    from omniopd_verl.verl_integration import trainers  # noqa: F401  registers omniopd_sync (checks its verl symbols)
    from omniopd_verl.verl_integration.cpu import trainer as cpu_trainer  # registers cpu_sync

    cpu_trainer.register_cpu_engines()


def register() -> None:
    """Register the estimator, the reward manager, the resolver and the runtime pieces (idempotent)."""
    from omegaconf import OmegaConf

    # the resolver first: if a registration below fails, resolving our YAML reports the cause
    if not OmegaConf.has_resolver(RESOLVER_NAME):
        OmegaConf.register_new_resolver(RESOLVER_NAME, config_resource)

    from verl.experimental.reward_loop.reward_manager import register as register_reward_manager
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, register_adv_est

    from omniopd_verl.verl_integration.estimator import omniopd_adv_estimator
    from omniopd_verl.verl_integration.reward_manager import OmniOPDRewardManager

    if ADV_ESTIMATOR_REGISTRY.get(ESTIMATOR_NAME) is not omniopd_adv_estimator:
        register_adv_est(ESTIMATOR_NAME)(omniopd_adv_estimator)
    register_reward_manager(REWARD_MANAGER_NAME)(OmniOPDRewardManager)
    from omniopd_verl.verl_integration import kl_anchor

    kl_anchor.register()  # the masked top-k reference KL of omniopd.kl_anchor=topk_ref
    register_runtime()


try:
    register()
except Exception as exc:  # noqa: BLE001 - kept for self_check() and logged at ERROR (verl would log at DEBUG)
    record_registration_error(exc)
    logger.error("OmniOPD failed to register its verl plugin: %s: %s", type(exc).__name__, exc, exc_info=True)
