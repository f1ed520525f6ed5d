"""The `cpu_sync` trainer mode: verl's synchronous trainer without an accelerator, OmniOPD's step metrics included.

With the CPU platform (platform.py) it makes verl's trainer run on CPU:
- one CPU per resource bundle (verl asks for 3 CPUs + 1 GPU per bundle, too much for a small machine);
- a worker that opens the gloo process group itself (verl would ask torch for "cpu:gloo,cpu:gloo");
- the FSDP2 engine registered for device "cpu", whose forward-only reference model is wrapped without
  the pinned-memory CPU offload verl forces on it (pin_memory() needs an accelerator).
Every private verl symbol used here is checked against the pinned verl at import (verl_private.py).
"""

from __future__ import annotations

import os

import ray
import torch.distributed as dist
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.workers.engine_workers import ActorRolloutRefWorker

from omniopd_verl.verl_integration import verl_private
from omniopd_verl.verl_integration.names import CPU_TRAINER_MODE
from omniopd_verl.verl_integration.trainers import OmniOPDMetricsMixin

verl_private.check(
    "PPOTrainer._init_resource_pool_mgr",
    "ResourcePoolManager.max_colocate_count",
    "FSDPEngine._build_fsdp_module",
    "ActorRolloutRefWorker.__init__",
)


class CPUActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's hybrid worker, opening the gloo process group itself (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))


@register_trainer(CPU_TRAINER_MODE)
class CPUSyncTrainer(OmniOPDMetricsMixin, PPOTrainerSync):
    """verl's synchronous trainer on CPU (see the module docstring); OmniOPD's step metrics included."""

    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        self.resource_pool_manager.max_colocate_count = 1
        for role in list(self.role_worker_mapping):
            if role != Role.Critic:  # in verl 0.9.1 every other role is an ActorRolloutRefWorker
                self.role_worker_mapping[role] = ray.remote(CPUActorRolloutRefWorker)


def register_cpu_engines() -> None:
    """verl's FSDP/FSDP2 engines for device 'cpu' (verl registers them for cuda and npu only)."""
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    class CPUFSDPEngineWithLMHead(FSDPEngineWithLMHead):
        """FSDP2 on gloo; the forward-only reference model wrapped without pinned-memory offload."""

        def _build_fsdp_module(self, module):
            cfg = self.engine_config
            if cfg.strategy != "fsdp2":
                raise ValueError(
                    f"actor_rollout_ref.actor.strategy={cfg.strategy!r} cannot run on CPU: allowed 'fsdp2' "
                    "(FSDP1 hard-codes sync_module_states=True, which needs an accelerator)"
                )
            if cfg.forward_only and not cfg.offload_policy:
                cfg.forward_only = False
                try:
                    return super()._build_fsdp_module(module)
                finally:
                    cfg.forward_only = True
            return super()._build_fsdp_module(module)

    for model_type, cls in (("language_model", CPUFSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        try:
            EngineRegistry.register(model_type=model_type, backend=["fsdp", "fsdp2"], device="cpu")(cls)
        except AssertionError:  # already registered in this process: register() ran twice
            pass
