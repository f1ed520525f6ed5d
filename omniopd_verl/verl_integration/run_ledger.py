"""The run's teacher ledger inside verl: created by the driver, found by every reward worker.

- `start_run_ledger(cfg)` runs in the driver (OmniOPD's trainer modes, before verl builds the reward
  workers): it creates the named Ray actor pinned to the driver's node and keeps the handle for the run
  (a named actor ends with its owner's last handle), and logs the run id, the spend file and the spend
  so far.
- `connect_run_ledger(cfg, omniopd)` runs in each reward worker: the same actor by name (created with
  identical options if a worker gets there first).
- The run id is `omniopd.run_id`, else `trainer.experiment_name`; the spend file is
  `<trainer.default_local_dir>/omniopd_teacher_ledger/<run id>.json`, next to the checkpoints a resumed
  run loads: a resume continues the same budget. The cache file (`omniopd.teacher.cache_path`) is opened
  by the ledger only.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from omniopd_verl.config import OmniOPDConfig

logger = logging.getLogger("omniopd_verl.run_ledger")


def _select(cfg: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default=None)


def run_id_of(cfg: Any, omniopd: OmniOPDConfig) -> str:
    return omniopd.run_id or str(_select(cfg, "trainer.experiment_name") or "omniopd")


def state_path_of(cfg: Any, run_id: str) -> str:
    folder = _select(cfg, "trainer.default_local_dir") or "checkpoints"
    return str(Path(folder) / "omniopd_teacher_ledger" / (re.sub(r"[^A-Za-z0-9_.-]", "_", run_id) + ".json"))


def _ensure(cfg: Any, omniopd: OmniOPDConfig, *, pin: bool):
    from omniopd_verl.teachers.ledger import LedgerSettings
    from omniopd_verl.teachers.ledger.actor import ensure_run_ledger

    run_id = run_id_of(cfg, omniopd)
    return ensure_run_ledger(
        LedgerSettings.from_teacher_config(omniopd.teacher),
        run_id,
        state_path=state_path_of(cfg, run_id),
        cache_path=omniopd.teacher.cache_path,
        pin_to_this_node=pin,
    )


def start_run_ledger(cfg: Any, omniopd: OmniOPDConfig):
    """The driver's side (see the module docstring); keep the returned handle for the whole run."""
    ledger = _ensure(cfg, omniopd, pin=True)
    status = ledger.status()
    budget = omniopd.teacher.max_cost_usd
    logger.warning(
        "OmniOPD teacher ledger: run id %r (omniopd.run_id), spend file %s: $%.6f spent so far%s; limits for the "
        "whole run: max_concurrency=%s requests_per_minute=%s tokens_per_minute=%s max_failure_rate=%s",
        ledger.run_id,
        state_path_of(cfg, ledger.run_id),
        status["spent_usd"],
        f" of max_cost_usd=${budget:g}" if budget is not None else "",
        omniopd.teacher.max_concurrency,
        omniopd.teacher.requests_per_minute,
        omniopd.teacher.tokens_per_minute,
        omniopd.teacher.max_failure_rate,
    )
    return ledger


def connect_run_ledger(cfg: Any, omniopd: OmniOPDConfig):
    """A reward worker's side (see the module docstring). None outside Ray (a reward manager built in a
    plain process, as unit tests do): the teacher library then keeps an in-process ledger."""
    import ray

    if not ray.is_initialized():
        return None
    return _ensure(cfg, omniopd, pin=False)
