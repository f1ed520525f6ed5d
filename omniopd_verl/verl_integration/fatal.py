"""Stopping verl's run when the teacher must stop it: on_failure='error', a spent budget, the failure-rate
guard, a rejected key or parameter (every `OmniOPDError` of the audit).

verl 0.9.1's agent-loop workers catch every exception of a trajectory (reward included), mark the
prompt as failed and carry on, so an exception raised in the reward manager never stops the run.
So the reward manager does not raise: it records the message in a named Ray actor (`report`) and
returns NaN scores for that trajectory; the `omniopd` estimator, which runs in the trainer process
before the actor update, sees the NaN and raises `TeacherStopError` with the recorded message
(`raise_if_reported`). The run stops before any update uses the failed trajectory.
"""

from __future__ import annotations

import logging

import torch

from omniopd_verl.errors import OmniOPDError

ACTOR_NAME = "omniopd_fatal_errors"
_handle = None  # the reporting process keeps the actor alive (Ray kills an actor with no handle left)
logger = logging.getLogger("omniopd_verl.fatal")


class TeacherStopError(OmniOPDError, RuntimeError):
    """A teacher failed with on_failure='error' inside verl's reward loop: the run stops."""


class _FatalErrors:
    def __init__(self):
        self.messages: list[str] = []

    def report(self, message: str) -> bool:
        """Record it; True for the run's first message (the one that is logged)."""
        self.messages.append(message)
        return len(self.messages) == 1

    def first(self) -> str | None:
        return self.messages[0] if self.messages else None


def report(message: str) -> None:
    """Record `message` for the trainer process (and log it at ERROR here)."""
    import ray

    global _handle
    if _handle is None:
        _handle = ray.remote(_FatalErrors).options(name=ACTOR_NAME, get_if_exists=True, num_cpus=0).remote()
    if ray.get(_handle.report.remote(message)):  # once per run, not once per trajectory and worker
        logger.error("OmniOPD stops the run: %s", message)


def first_reported() -> str | None:
    import ray

    try:
        actor = ray.get_actor(ACTOR_NAME)
    except ValueError:
        return None
    return ray.get(actor.first.remote())


def raise_if_reported(token_level_rewards: torch.Tensor) -> None:
    """Raise TeacherStopError if a trajectory carries the NaN scores `report` goes with."""
    if not torch.isnan(token_level_rewards).any():
        return
    message = first_reported() or "a trajectory's OmniOPD scores are NaN (see the reward workers' log)"
    raise TeacherStopError(f"OmniOPD stopped the run: {message}")
