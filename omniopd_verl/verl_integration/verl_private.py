"""Every private or internal verl symbol omniopd-verl touches, why, and a check against the pinned verl.

verl 0.9.1 has public registries for platforms, rollout replicas, engines and trainers, but the CPU
trainer and the `hf` rollout also need a few things verl does not export. Each is listed here once,
with the reason, and checked when the module that uses it is imported: if a verl release moves or
changes one, `import verl` logs (and `self_check()` raises) a VerlAPIError that names the symbol,
instead of a confusing failure deep inside a Ray worker.

`check(*names)` verifies the listed symbols; `PRIVATE_SYMBOLS` is the table docs/verl.md reproduces.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

from omniopd_verl.errors import PluginError

PINNED_VERL = "0.9.1"


class VerlAPIError(PluginError):
    """A verl symbol omniopd-verl relies on is missing or has a different signature."""


@dataclass(frozen=True)
class PrivateSymbol:
    module: str
    qualname: str
    why: str
    params: tuple[str, ...] | None = None  # the leading parameter names we call or override with
    kind: str = "callable"  # "callable", "dict" or "attribute"


PRIVATE_SYMBOLS: dict[str, PrivateSymbol] = {
    s.qualname: s
    for s in (
        PrivateSymbol(
            "verl.workers.rollout.base",
            "_ROLLOUT_REGISTRY",
            "the in-worker rollout adapter has no public registration: get_rollout_class() reads this "
            "(name, mode) -> 'module.Class' dict, so the `hf` backend adds ('hf', 'async') to it",
            kind="dict",
        ),
        PrivateSymbol(
            "verl.trainer.ppo.v1.trainer_base",
            "PPOTrainer._init_resource_pool_mgr",
            "overridden by the cpu_sync trainer: one CPU per bundle (max_colocate_count=1; verl asks for 3 "
            "CPUs per bundle) and the gloo-initialising CPU worker class in role_worker_mapping",
            params=("self",),
        ),
        PrivateSymbol(
            "verl.trainer.ppo.v1.trainer_base",
            "PPOTrainer._compute_metrics",
            "extended by the omniopd_sync/cpu_sync trainers: adds the audit/* and teacher/* step metrics, "
            "read from the trajectories' reward_extra_info (verl 0.9.1 logs it only in validation)",
            params=("self", "batch", "metrics", "timing_raw", "global_steps", "epoch"),
        ),
        PrivateSymbol(
            "verl.trainer.ppo.v1.trainer_base",
            "PPOTrainer._compute_advantage",
            "wrapped by the omniopd_sync/cpu_sync trainers: for advantage='centered_batch' the batch's audited-"
            "token mask is read from TransferQueue and handed to the estimator (verl passes it no such argument)",
            params=("self", "batch", "metrics"),
        ),
        PrivateSymbol(
            "verl.trainer.ppo.v1.trainer_base",
            "PPOTrainer._setup",
            "extended by the omniopd_sync/cpu_sync trainers: the run's teacher ledger (a named Ray actor on "
            "the driver's node) is created before verl builds the reward workers",
            params=("self",),
        ),
        PrivateSymbol(
            "verl.experimental.agent_loop.agent_loop",
            "AgentLoopWorker._run_agent_loop",
            "the omniopd_agent loop reads `trajectory['validate']` from this coroutine's frame (verl does not "
            "pass it to agent loops): validation batches get no teacher calls",
            params=("self", "sampling_params", "trajectory"),
        ),
        PrivateSymbol(
            "verl.single_controller.ray.base",
            "ResourcePoolManager.max_colocate_count",
            "set to 1 on CPU: each bundle then asks Ray for 1 CPU instead of 3 (single_controller/ray/base.py)",
            kind="attribute",
        ),
        PrivateSymbol(
            "verl.workers.engine.fsdp.transformer_impl",
            "FSDPEngine._build_fsdp_module",
            "overridden for device 'cpu': verl wraps the forward-only reference model with "
            "CPUOffloadPolicy(pin_memory=True), and pin_memory() needs an accelerator",
            params=("self", "module"),
        ),
        PrivateSymbol(
            "verl.workers.engine_workers",
            "ActorRolloutRefWorker.__init__",
            "subclassed on CPU to call init_process_group('gloo') first: verl would build the backend "
            "'cpu:gloo,cpu:gloo' (utils/distributed.py), which torch rejects",
            params=("self", "config", "role"),
        ),
    )
}


def _resolve(module: str, qualname: str):
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        if isinstance(obj, type) and part in getattr(obj, "__dataclass_fields__", {}):
            return obj.__dataclass_fields__[part]
        obj = getattr(obj, part)
    return obj


def problem(symbol: PrivateSymbol) -> str | None:
    """Why `symbol` does not match what omniopd-verl expects, or None if it does."""
    try:
        obj = _resolve(symbol.module, symbol.qualname)
    except (ImportError, AttributeError) as exc:
        return f"{symbol.module}:{symbol.qualname} is missing ({type(exc).__name__}: {exc})"
    if symbol.kind == "dict" and not isinstance(obj, dict):
        return f"{symbol.module}:{symbol.qualname} is a {type(obj).__name__}, not a dict"
    if symbol.kind == "callable":
        if not callable(obj):
            return f"{symbol.module}:{symbol.qualname} is not callable"
        if symbol.params is not None:
            names = tuple(inspect.signature(obj).parameters)[: len(symbol.params)]
            if names != symbol.params:
                return f"{symbol.module}:{symbol.qualname} takes {names}, expected {symbol.params}"
    return None


def check(*qualnames: str) -> None:
    """Raise VerlAPIError naming every listed symbol that moved or changed in the installed verl."""
    import verl

    found = [(q, problem(PRIVATE_SYMBOLS[q])) for q in qualnames]
    found = [(q, p) for q, p in found if p is not None]
    if found:
        why = "; ".join(f"{p} -- needed because {PRIVATE_SYMBOLS[q].why}" for q, p in found)
        raise VerlAPIError(
            f"verl {getattr(verl, '__version__', '?')} is not the verl omniopd-verl was built against "
            f"(verl=={PINNED_VERL}): {why}. Install verl=={PINNED_VERL}."
        )
