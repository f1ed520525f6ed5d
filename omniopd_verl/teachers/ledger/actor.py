"""The ledger's Ray placement: one named actor per run, shared by every reward worker on every node.

- Named `omniopd_teacher_ledger:<run id>` in the job's namespace, created with `get_if_exists`: the
  driver creates it before the workers (`ensure_run_ledger`, called by OmniOPD's trainer modes), pinned
  to the driver's node; a worker that starts first creates the same actor (its options are identical)
  and every later caller gets the one that exists.
- `max_restarts`: Ray restarts the actor when its process dies; its `LedgerCore` reloads the state file
  (spend, reservations, rate windows, metrics), so the budget holds across the restart. The actor's
  owner is the process that created it (the driver): the ledger ends with the run.
- The actor is the only process that opens the cache's SQLite file (rollback journal, not WAL: WAL's
  shared memory needs every process on one host, which a network filesystem does not give).
- Synchronous, one call at a time: every call is a short, lock-protected update of the core.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

from omniopd_verl.teachers.ledger.client import RayLedger, _dispatch
from omniopd_verl.teachers.ledger.core import LedgerCore, LedgerSettings

log = logging.getLogger("omniopd_verl.teachers.ledger")

ACTOR_PREFIX = "omniopd_teacher_ledger:"
MAX_RESTARTS = 4
MAX_TASK_RETRIES = 3  # a call retried after a restart may settle twice: the cost is then counted twice (safe side)


def actor_name(run_id: str) -> str:
    return ACTOR_PREFIX + re.sub(r"[^A-Za-z0-9_.:-]", "_", run_id)


class LedgerActor:
    """The Ray actor around a LedgerCore (see the module docstring)."""

    def __init__(self, settings: dict[str, Any], run_id: str, state_path: str | None, cache_path: str | None):
        import ray

        from omniopd_verl.teachers.cache import TeacherCache

        restarted = ray.get_runtime_context().was_current_actor_reconstructed
        cache = TeacherCache(cache_path, wal=False) if cache_path else None
        self.core = LedgerCore(
            LedgerSettings(**settings), run_id=run_id, state_path=state_path, cache=cache, restarted=restarted
        )

    def call(self, method: str, items: Any) -> Any:
        if method == "metrics":
            return self.core.metrics()
        if method == "status":
            import os

            import omniopd_verl

            status = self.core.status()
            status.update(pid=os.getpid(), module=omniopd_verl.__file__, run_id=self.core.run_id)
            return status
        return _dispatch(self.core, method, items)


def ensure_run_ledger(
    settings: LedgerSettings,
    run_id: str,
    *,
    state_path: str | None,
    cache_path: str | None,
    pin_to_this_node: bool = False,
) -> RayLedger:
    """The run's ledger actor: created if absent (pinned to this node when asked), else the existing one."""
    import ray

    options: dict[str, Any] = dict(
        name=actor_name(run_id),
        get_if_exists=True,
        num_cpus=0,
        max_restarts=MAX_RESTARTS,
        max_task_retries=MAX_TASK_RETRIES,
        max_concurrency=1,
    )
    if pin_to_this_node:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = ray.get_runtime_context().get_node_id()
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
    handle = (
        ray.remote(LedgerActor).options(**options).remote(dataclasses.asdict(settings), run_id, state_path, cache_path)
    )
    return RayLedger(handle, run_id, has_cache=cache_path is not None)
