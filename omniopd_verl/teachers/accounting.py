"""Teacher accounting: calls, retries, failures, cache hits, tokens, cost, seconds, and the hard budget.

One `TeacherMeter` per teacher (the library's `Teacher`); `snapshot()` is what `metrics()` returns.
The budget (`TeacherConfig.max_cost_usd`) is checked before every raw call: once the spend has reached
it, `check_budget()` raises `TeacherBudgetExceeded` and the run stops. Calls already in flight at that
moment still complete and are counted (so the spend is what the server served) and cached, so a rerun
with a larger budget does not pay for them again.
"""

from __future__ import annotations

import threading

from omniopd_verl.errors import OmniOPDError

METRIC_KEYS = (
    "teacher/calls",
    "teacher/retries",
    "teacher/failures",
    "teacher/cache_hits",
    "teacher/prompt_tokens",
    "teacher/completion_tokens",
    "teacher/cost_usd",
    "teacher/seconds",
    "teacher/empty_stop_samples",  # samples whose text is empty and that ended with a stop: real, scored answers
)


class TeacherBudgetExceeded(OmniOPDError):
    """The teacher has spent omniopd.teacher.max_cost_usd: the run stops instead of paying more."""


class TeacherMeter:
    """Thread-safe cumulative counters (the local backends record from a worker thread)."""

    def __init__(self, max_cost_usd: float | None = None):
        self.max_cost_usd = max_cost_usd
        self._lock = threading.Lock()
        self._values = dict.fromkeys(METRIC_KEYS, 0.0)

    def record_call(
        self, *, prompt_tokens: int = 0, completion_tokens: int = 0, cost_usd: float = 0.0, seconds: float = 0.0
    ) -> None:
        """One HTTP call (or one local generation share) that returned, usable or not."""
        with self._lock:
            v = self._values
            v["teacher/calls"] += 1
            v["teacher/prompt_tokens"] += prompt_tokens
            v["teacher/completion_tokens"] += completion_tokens
            v["teacher/cost_usd"] += cost_usd
            v["teacher/seconds"] += seconds

    def add(self, key: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def retry(self) -> None:
        self.add("teacher/retries")

    def failure(self) -> None:
        self.add("teacher/failures")

    def cache_hit(self) -> None:
        self.add("teacher/cache_hits")

    @property
    def spent_usd(self) -> float:
        with self._lock:
            return self._values["teacher/cost_usd"]

    def check_budget(self) -> None:
        """Raise TeacherBudgetExceeded once the spend has reached max_cost_usd."""
        if self.max_cost_usd is None:
            return
        spent = self.spent_usd
        if spent >= self.max_cost_usd:
            raise TeacherBudgetExceeded(
                f"teacher budget exhausted: spent ${spent:.6f} of omniopd.teacher.max_cost_usd="
                f"${self.max_cost_usd:g}; stopping before the next paid call. Results paid for so far are "
                "cached (if omniopd.teacher.cache_path is set): raise the budget and rerun to continue."
            )

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._values)
