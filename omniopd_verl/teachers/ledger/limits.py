"""The run-wide limits a ledger applies to every raw teacher call: rate windows, circuit breaker, failure guard.

Plain data structures without locks or I/O: `core.LedgerCore` owns them under its own lock, so the same
rules run in-process (audit CLI, local engine) and in the Ray actor (verl's reward workers).
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Iterable

WINDOW_S = 60.0
"""A rate limit's window: requests_per_minute / tokens_per_minute are what any 60 s may hold."""


class RateWindow:
    """At most `limit` units in any window of `window_s` seconds: a token bucket whose tokens come back
    exactly `window_s` after they were used. Unlike a leaky bucket (aiolimiter) it never lets a burst
    exceed the setting: a full bucket plus its refill would allow up to 2x the limit in one window.
    Entries may be dated ahead of now (a ledger lease's, see LedgerSettings.lease_ttl_s): they expire by date, not
    by the order they came in."""

    def __init__(self, limit: float, window_s: float = WINDOW_S):
        self.limit = float(limit)
        self.window_s = float(window_s)
        self._used: dict[int, tuple[float, float]] = {}  # id -> (t, amount)
        self._by_time: list[tuple[float, int]] = []  # a heap of (t, id): what expires next
        self._total = 0.0

    def _expire(self, now: float) -> None:
        while self._by_time and self._by_time[0][0] <= now - self.window_s:
            t, key = heapq.heappop(self._by_time)
            entry = self._used.get(key)
            if entry is not None and entry[0] == t:
                del self._used[key]
                self._total -= entry[1]
        if not self._used:
            self._total = 0.0  # no float residue once empty
            self._by_time.clear()

    def cap(self, amount: float) -> float:
        """One call larger than the whole window is charged the whole window (it could never fit otherwise)."""
        return min(float(amount), self.limit)

    def wait_s(self, amount: float, now: float) -> float:
        """0 when `amount` fits now, else the seconds until enough of the window has expired."""
        self._expire(now)
        amount = self.cap(amount)
        if self._total + amount <= self.limit + 1e-9:
            return 0.0
        need = self._total + amount - self.limit
        freed = 0.0
        for t, used in sorted(self._used.values()):
            freed += used
            if freed >= need - 1e-9:
                return max(1e-3, t + self.window_s - now)
        return self.window_s  # unreachable: the whole window frees everything

    def add(self, key: int, amount: float, now: float) -> None:
        amount = self.cap(amount)
        self._used[key] = (now, amount)
        heapq.heappush(self._by_time, (now, key))
        self._total += amount

    def adjust(self, key: int, amount: float) -> None:
        """Replace a call's estimate by what it really used (only while it is still in the window)."""
        if key in self._used:
            t, old = self._used[key]
            amount = self.cap(amount)
            self._used[key] = (t, amount)
            self._total += amount - old

    def in_window(self, now: float) -> float:
        self._expire(now)
        return self._total


class CircuitBreaker:
    """Consecutive transient failures (429, 5xx, timeouts) open the breaker: every worker waits together.

    After `threshold` transient failures in a row, no call is admitted for `base_s`, doubling with each
    reopening up to `max_s`. When it closes again the next call is a probe: one more transient failure
    reopens it at once; a success resets it."""

    def __init__(self, threshold: int = 5, base_s: float = 1.0, max_s: float = 60.0):
        self.threshold = threshold
        self.base_s = base_s
        self.max_s = max_s
        self.consecutive = 0
        self.opened = 0  # reopenings since the last success
        self.open_until = 0.0
        self.trips = 0  # run total, a metric

    def wait_s(self, now: float) -> float:
        return max(0.0, self.open_until - now)

    def success(self) -> None:
        self.consecutive = 0
        self.opened = 0

    def transient(self, now: float) -> None:
        self.consecutive += 1
        if self.consecutive >= self.threshold:
            self.open_until = now + min(self.max_s, self.base_s * 2.0**self.opened)
            self.opened += 1
            self.trips += 1
            self.consecutive = self.threshold - 1  # half-open: the probe's failure reopens


class FailureGuard:
    """omniopd.teacher.max_failure_rate over the last `window` requests (after their retries).

    A teacher that fails most requests (a wrong model name, a parameter it rejects, a dead server) would
    otherwise let on_failure='drop' train on the KL term alone, step after step. Judged only once
    `min_requests` requests have finished, so one early failure does not stop a run."""

    def __init__(self, max_rate: float, window: int = 200, min_requests: int = 8):
        self.max_rate = max_rate
        self.min_requests = min_requests
        self._recent: collections.deque[bool] = collections.deque(maxlen=window)
        self.causes: collections.Counter[str] = collections.Counter()

    def record(self, failures: Iterable[str | None]) -> str | None:
        """Record outcomes (None = success, else the failure's cause); the stop message once tripped."""
        for cause in failures:
            self._recent.append(cause is not None)
            if cause is not None:
                self.causes[cause] += 1
        n = len(self._recent)
        failed = sum(self._recent)
        if n < self.min_requests or failed / n <= self.max_rate:
            return None
        cause, count = self.causes.most_common(1)[0]
        return (
            f"the teacher failed {failed} of the last {n} requests ({failed / n:.0%}), above "
            f"omniopd.teacher.max_failure_rate={self.max_rate:g}; the cause seen most ({count} times): {cause}. "
            "Fix the teacher (or raise max_failure_rate) and rerun: answers paid for so far are cached "
            "(if omniopd.teacher.cache_path is set)."
        )
