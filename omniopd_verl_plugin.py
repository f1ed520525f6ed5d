"""verl's `verl.plugins` entry point for omniopd-verl: a tiny module outside the package, on purpose.

verl 0.9.1 imports every `verl.plugins` entry point inside `import verl` and logs a failure at DEBUG
level, so a broken install (a missing dependency, a shadowed module) used to show only
`Unknown advantage estimator: omniopd` much later. This module sits outside `omniopd_verl` so that it
still imports when the package does not. It imports `omniopd_verl.verl_integration.plugin` (the real
registrations); if that raises, it logs the cause at ERROR level and registers placeholders under
OmniOPD's names (the `omniopd` estimator and reward manager, the `hf` rollout), each raising a
RuntimeError with the cause when verl asks for it.
"""

from __future__ import annotations

import logging
import traceback

logger = logging.getLogger("omniopd_verl_plugin")
import_error: BaseException | None = None


def _cause_message(exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" (at {where.filename}:{where.lineno})" if where else ""
    return (
        f"omniopd-verl failed to import, so its verl plugin is not registered: {type(exc).__name__}: {exc}{at}. "
        "Run `python -c 'import omniopd_verl.verl_integration.plugin'` for the full traceback."
    )


def _register_placeholders(message: str) -> None:
    """Make OmniOPD's names resolve to objects that raise `message` when verl uses them."""

    def fail(*args, **kwargs):
        raise RuntimeError(message)

    try:
        from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

        ADV_ESTIMATOR_REGISTRY.setdefault("omniopd", fail)
    except Exception:  # noqa: BLE001 - verl itself is broken; the ERROR log already says why
        pass
    try:
        from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER

        class OmniOPDUnavailable:
            """Placeholder reward manager: omniopd-verl failed to import."""

            def __init__(self, *args, **kwargs):
                raise RuntimeError(message)

            @classmethod
            def init_class(cls, *args, **kwargs):
                raise RuntimeError(message)

        REWARD_MANAGER.setdefault("omniopd", OmniOPDUnavailable)
    except Exception:  # noqa: BLE001
        pass
    try:
        from verl.workers.rollout.replica import RolloutReplicaRegistry

        RolloutReplicaRegistry.register("hf", fail)
    except Exception:  # noqa: BLE001
        pass


try:
    import omniopd_verl.verl_integration.plugin  # noqa: F401 - registers everything
except Exception as exc:  # noqa: BLE001 - the point of this module: make the cause visible
    import_error = exc
    logger.error(_cause_message(exc))
    _register_placeholders(_cause_message(exc))
