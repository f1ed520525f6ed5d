"""The verl v1 trainer mode OmniOPD registers, `omniopd_sync`, and the step metrics every OmniOPD mode adds.

`omniopd_sync` is verl's `PPOTrainerSync` plus OmniOPD's step metrics (`OmniOPDMetricsMixin`, also the
base of the CPU room's `cpu_sync`, verl_integration/cpu/trainer.py): verl 0.9.1 stores each trajectory's
`reward_extra_info` in TransferQueue but reads it only for validation, so `_compute_metrics` is
extended to read it for training steps too and add `audit/*` and `teacher/*`
(step_metrics.step_metrics) to the metrics verl logs (console `step:N - ...`, TensorBoard, wandb).
With `trainer.rollout_data_dir` set it also writes `omniopd_step<N>.jsonl` there: per trajectory the
response, its response mask, the rollout and actor log-probs, rm_scores, the advantages the actor is
trained on and the reward_extra_info (tests recompute the advantages from it independently).

Every private verl symbol used here is checked against the pinned verl at import (verl_private.py).
"""

from __future__ import annotations

import json
import logging
import os

from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from omniopd_verl.config import CENTERED_BATCH
from omniopd_verl.verl_integration import verl_private
from omniopd_verl.verl_integration.names import AUDIT_MASK_KEY, ESTIMATOR_NAME, SYNC_TRAINER_MODE
from omniopd_verl.verl_integration.step_metrics import step_metrics

verl_private.check(
    "PPOTrainer._setup",
    "PPOTrainer._compute_metrics",
    "PPOTrainer._compute_advantage",
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
