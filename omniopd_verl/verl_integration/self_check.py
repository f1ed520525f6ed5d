"""Is OmniOPD registered in this process's verl? `self_check()` answers with a PluginError naming the cause.

It lives apart from plugin.py (which imports the reward manager and the agent loop to register them)
so that the reward manager, the agent loop and the train CLI can call it without an import cycle.
plugin.py records the exception its registration raised here (`record_registration_error`).
"""

from __future__ import annotations

from omniopd_verl.errors import PluginError
from omniopd_verl.verl_integration.names import (
    CPU_TRAINER_MODE,
    ESTIMATOR_NAME,
    REWARD_MANAGER_NAME,
    SYNC_TRAINER_MODE,
)

_registration_error: BaseException | None = None


def record_registration_error(exc: BaseException) -> None:
    """Keep the exception plugin.register() raised, for self_check() to report."""
    global _registration_error
    _registration_error = exc


def self_check() -> None:
    """Raise a PluginError with the cause unless OmniOPD is registered in this process's verl."""
    problems = []
    if _registration_error is not None:
        problems.append(f"registration raised {type(_registration_error).__name__}: {_registration_error}")
    try:
        from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER
        from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

        if ESTIMATOR_NAME not in ADV_ESTIMATOR_REGISTRY:
            problems.append(f"advantage estimator {ESTIMATOR_NAME!r} is not registered")
        if REWARD_MANAGER_NAME not in REWARD_MANAGER:
            problems.append(f"reward manager {REWARD_MANAGER_NAME!r} is not registered")
        from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

        for mode in (SYNC_TRAINER_MODE, CPU_TRAINER_MODE):
            if mode not in TRAINER_REGISTRY:
                problems.append(f"trainer mode {mode!r} is not registered")
    except Exception as exc:  # verl itself is broken: say so rather than a bare ImportError later
        problems.append(f"verl failed to import: {type(exc).__name__}: {exc}")
    if problems:
        raise PluginError(
            "OmniOPD is not registered in verl in this process (verl swallows plugin import errors): "
            + "; ".join(problems)
            + ". Check that omniopd-verl is installed in this environment (`pip show omniopd-verl`), that "
            "VERL_USE_EXTERNAL_PLUGINS is unset, 'auto' or lists 'omniopd', and run "
            "`python -c 'from omniopd_verl.verl_integration import plugin; plugin.register()'` for the traceback."
        )
