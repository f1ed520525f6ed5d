"""verl v1 trainer modes OmniOPD registers: `omniopd_sync` (GPU) and `cpu_sync` (CPU).

Both are verl's `PPOTrainerSync` plus OmniOPD's step metrics: verl 0.9.1 stores each trajectory's
`reward_extra_info` in TransferQueue but reads it only for validation, so `_compute_metrics` is
extended to read it for training steps too and add `audit/*` and `teacher/*`
(step_metrics.step_metrics) to the metrics verl logs (console `step:N - ...`, TensorBoard, wandb).
With `trainer.rollout_data_dir` set it also writes `omniopd_step<N>.jsonl` there: per trajectory the
response, its response mask, the rollout and actor log-probs, rm_scores, the advantages the actor is
trained on and the reward_extra_info (tests recompute the advantages from it independently).

`cpu_sync` also makes verl's trainer run without an accelerator (with the CPU platform, cpu_platform.py):
- one CPU per resource bundle (verl asks for 3 CPUs + 1 GPU per bundle, too much for a small machine);
- a worker that opens the gloo process group itself (verl would ask torch for "cpu:gloo,cpu:gloo");
- the FSDP2 engine registered for device "cpu", whose forward-only reference model is wrapped without
  the pinned-memory CPU offload verl forces on it (pin_memory() needs an accelerator).
Every private verl symbol used here is checked against the pinned verl at import (verl_private.py).
"""

from __future__ import annotations

import json
import logging
import os

import ray
import torch.distributed as dist
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.workers.engine_workers import ActorRolloutRefWorker

from omniopd_verl.config import CENTERED_BATCH
from omniopd_verl.verl_integration import verl_private
from omniopd_verl.verl_integration.names import AUDIT_MASK_KEY, CPU_TRAINER_MODE, ESTIMATOR_NAME, SYNC_TRAINER_MODE
from omniopd_verl.verl_integration.step_metrics import step_metrics

verl_private.check(
    "PPOTrainer._setup",
    "PPOTrainer._init_resource_pool_mgr",
    "PPOTrainer._compute_metrics",
    "PPOTrainer._compute_advantage",
    "ResourcePoolManager.max_colocate_count",
    "FSDPEngine._build_fsdp_module",
    "ActorRolloutRefWorker.__init__",
)

logger = logging.getLogger("omniopd_verl.trainers")

DUMP_FIELDS = ["prompts", "responses", "response_mask", "rollout_log_probs", "old_log_probs", "rm_scores", "advantages"]


def _rows(value) -> list:
    """Per-row values of a TransferQueue field: nested (jagged) tensors, padded tensors or object lists."""
    if getattr(value, "is_nested", False):
        return list(value.unbind())
    return value.tolist() if hasattr(value, "tolist") else list(value)


class OmniOPDMetricsMixin:
    """Adds audit/* and teacher/* to verl's training-step metrics (see the module docstring), and owns the
    run's teacher ledger (run_ledger.py): created before the reward workers, reported once per step."""

    _omniopd_ledger = None

    def _setup(self):
        from omegaconf import OmegaConf

        from omniopd_verl.verl_integration.checks import check_run_wiring, omniopd_config_from_verl
        from omniopd_verl.verl_integration.run_ledger import start_run_ledger

        if OmegaConf.select(self.config, "omniopd", default=None) is None:
            # a plain verl run on our CPU overlay (the GRPO baseline): no teacher, no ledger, no OmniOPD checks
            return super()._setup()
        omniopd = omniopd_config_from_verl(self.config)
        check_run_wiring(self.config, omniopd)  # before any worker starts: main_ppo runs none of the CLI's checks
        self._omniopd_ledger = start_run_ledger(self.config, omniopd)  # the handle lives as long as the run
        return super()._setup()

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        import transfer_queue as tq

        super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        if self._omniopd_ledger is not None:  # the run's totals: every worker, validation calls included
            metrics.update(self._omniopd_ledger.metrics())
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
        extra = _rows(data["extra_fields"])
        padding = [bool(tag.get("is_padding", False)) for tag in batch.tags]
        infos = [
            (e.get("reward_extra_info") if isinstance(e, dict) else None) if not pad else None
            for e, pad in zip(extra, padding, strict=True)
        ]
        metrics.update(step_metrics(infos))
        dump_dir = self.config.trainer.get("rollout_data_dir", None)
        if dump_dir:
            self._dump_omniopd_rows(batch, infos, padding, dump_dir, global_steps)

    def _compute_advantage(self, batch, metrics):
        """verl's (below), and when the estimator stops the run, the reason the run's ledger recorded.

        The reward workers' report (fatal.py) can be missed by the estimator's look-up on a loaded machine
        (it then raised its generic 'scores are NaN' message); the ledger in this process holds the stop."""
        from omniopd_verl.verl_integration.fatal import TeacherStopError

        try:
            return self._compute_omniopd_advantage(batch, metrics)
        except TeacherStopError as err:
            stopped = self._omniopd_ledger.status().get("stopped") if self._omniopd_ledger is not None else None
            if stopped and stopped[1] not in str(err):
                raise TeacherStopError(f"OmniOPD stopped the run: {stopped[1]}") from err
            raise

    def _compute_omniopd_advantage(self, batch, metrics):
        """verl's, with the batch's audited-token mask available to the estimator (centered_batch)."""
        from omegaconf import OmegaConf

        if self.config.algorithm.adv_estimator != ESTIMATOR_NAME:
            return super()._compute_advantage(batch, metrics)
        if OmegaConf.select(self.config, "algorithm.omniopd.advantage", default=None) != CENTERED_BATCH:
            return super()._compute_advantage(batch, metrics)
        import transfer_queue as tq

        from omniopd_verl.verl_integration.batch_context import BATCH_AUDIT_MASK

        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=[AUDIT_MASK_KEY])
        token = BATCH_AUDIT_MASK.set(data.to_padded_tensor()[AUDIT_MASK_KEY].bool())
        try:
            return super()._compute_advantage(batch, metrics)
        finally:
            BATCH_AUDIT_MASK.reset(token)

    def _dump_omniopd_rows(self, batch, infos, padding, dump_dir: str, global_steps: int) -> None:
        import transfer_queue as tq

        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=DUMP_FIELDS)
        fields = {name: _rows(data[name]) for name in DUMP_FIELDS if name in data.keys()}
        rows = []
        for i, key in enumerate(batch.keys):
            if padding[i]:
                continue
            row = {"key": key, "step": global_steps, "reward_extra_info": infos[i]}
            for name, values in fields.items():
                row[name] = [x.item() if hasattr(x, "item") else x for x in values[i]]
            rows.append(row)
        os.makedirs(dump_dir, exist_ok=True)
        with open(os.path.join(dump_dir, f"omniopd_step{global_steps}.jsonl"), "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


@register_trainer(SYNC_TRAINER_MODE)
class OmniOPDSyncTrainer(OmniOPDMetricsMixin, PPOTrainerSync):
    """verl's synchronous trainer with OmniOPD's step metrics."""


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
