"""Teacher accounting: the budget's rules, and the counters (calls, retries, failures, tokens, cost, ...).

The budget rules live here, in one place, as plain data and a small thread-safe `Budget` with a
reserve/settle protocol, so that a run-wide ledger (issue 20) can own a `Budget` unchanged and the
workers keep calling `reserve` before and `settle` after each raw call:

1. Before a call is sent, its worst case is reserved: `prompt_token_bound` (one token per UTF-8 byte of
   what is sent: byte-level BPE and byte-fallback tokenizers never need more) plus n x max_tokens, at
   the price table. A call whose worst case exceeds what is left of the budget (max - spent) is refused
   (`TeacherBudgetExceeded`); one that fits only once the calls in flight settle waits for them
   (`reserve` returns None). So the spend never passes the budget unless a server bills more than it
   was asked for (ignoring max_tokens, or a reported cost above the price table). A refusal is final:
   the run stops (its in-flight calls land), it does not squeeze smaller calls in after a stop.
2. After the call, the reservation is settled with the real cost. The usage a server reports is
   trusted only when it is possible (`settle_usage`): a missing, negative, non-integer or impossible
   count (0 prompt tokens for a non-empty prompt, fewer completion tokens than non-empty samples) is
   replaced by our own count (the same one-token-per-byte bound, an overestimate: a budget must not be
   starved by a server that does not say what it served), and the call is counted in
   `teacher/usage_estimated`.
3. A call abandoned at the timeout may still be billed by the provider: it is settled at its worst case
   and counted in `teacher/abandoned_calls`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
    "teacher/usage_estimated",  # calls whose usage the server did not report (or reported impossibly): our count
    "teacher/abandoned_calls",  # calls given up at the timeout, counted at their worst-case cost
    "teacher/cache_invalid",  # cached entries that failed validation when read: treated as misses
)

CHAT_OVERHEAD_TOKENS = 16
"""Tokens a chat template may add per message (role markers, separators) on top of the content's bytes."""


class TeacherBudgetExceeded(OmniOPDError):
    """The teacher has spent omniopd.teacher.max_cost_usd: the run stops instead of paying more."""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False  # True when any field is our own count, not the server's


def prompt_token_bound(prompt: str | None, messages: Sequence[dict[str, Any]] | None) -> int:
    """An upper bound on the prompt tokens of what is sent: UTF-8 bytes (+ CHAT_OVERHEAD_TOKENS per message)."""
    if prompt is not None:
        return len(prompt.encode("utf-8", "surrogatepass"))
    total = 0
    for message in messages or ():
        content = message.get("content", "")
        total += len(str(content).encode("utf-8", "surrogatepass")) + CHAT_OVERHEAD_TOKENS
    return total


def worst_case_usage(prompt_bound: int, n: int, max_tokens: int) -> Usage:
    """The most one call can use: the whole prompt bound, and n samples of max_tokens each."""
    return Usage(prompt_bound, n * max_tokens, estimated=True)


def _count(value: Any) -> int | None:
    """A reported token count, or None when it is missing or cannot be a count."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def settle_usage(reported_prompt: Any, reported_completion: Any, *, prompt_bound: int, texts: Sequence[str]) -> Usage:
    """The usage to count for a call that returned: the server's where possible, else our count."""
    prompt = _count(reported_prompt)
    if prompt is None or (prompt == 0 and prompt_bound > 0):
        prompt = None
    completion = _count(reported_completion)
    non_empty = sum(1 for t in texts if t)
    if completion is None or completion < non_empty:  # every non-empty text took at least one token
        completion = None
    estimated = prompt is None or completion is None
    if prompt is None:
        prompt = prompt_bound
    if completion is None:
        completion = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts if isinstance(t, str))
    return Usage(prompt, completion, estimated)


def valid_cost(value: Any) -> float | None:
    """A reported cost in USD, or None when it is missing or impossible (negative, NaN, infinite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None


@dataclass
class Reservation:
    usd: float


class Budget:
    """The hard budget (max_cost_usd): reserve a call's worst case before sending, settle after. Thread-safe."""

    def __init__(self, max_cost_usd: float | None):
        self.max_cost_usd = max_cost_usd
        self._lock = threading.Lock()
        self.spent_usd = 0.0
        self.reserved_usd = 0.0
        self.stopped: str | None = None  # the refusal's message: every later reserve repeats it

    def reserve(self, worst_case_usd: float | None) -> Reservation | None:
        """A reservation, or None when the call fits only after the calls in flight settle (wait, then ask
        again). Raises TeacherBudgetExceeded when the budget is spent or the call's worst case exceeds what
        is left. A worst case of None (a teacher that reports its own cost, with no price table) reserves 0."""
        worst = 0.0 if worst_case_usd is None else float(worst_case_usd)
        with self._lock:
            if self.max_cost_usd is None:
                self.reserved_usd += worst
                return Reservation(worst)
            if self.stopped is not None:
                raise TeacherBudgetExceeded(self.stopped)
            left = self.max_cost_usd - self.spent_usd
            if left <= 0 or (worst > left and worst > 0):
                self.stopped = self._message(worst, left)
                raise TeacherBudgetExceeded(self.stopped)
            if worst > left - self.reserved_usd:
                return None
            self.reserved_usd += worst
            return Reservation(worst)

    def settle(self, reservation: Reservation, cost_usd: float) -> None:
        """Replace the reservation by what the call cost (call once per reservation)."""
        with self._lock:
            self.reserved_usd = max(0.0, self.reserved_usd - reservation.usd)
            self.spent_usd += cost_usd

    def _message(self, worst: float, left: float) -> str:
        spent = f"spent ${self.spent_usd:.6f} of omniopd.teacher.max_cost_usd=${self.max_cost_usd:g}"
        if left <= 0:
            why = f"teacher budget exhausted: {spent}; stopping before the next paid call."
        else:
            why = (
                f"teacher budget too small for the next call: it could cost up to ${worst:.6f} (its prompt and "
                f"its max output at the price table), more than the ${left:.6f} left ({spent}); not sent."
            )
        return (
            f"{why} Results paid for so far are cached (if omniopd.teacher.cache_path is set): raise the budget "
            "and rerun to continue."
        )


class TeacherMeter:
    """Thread-safe cumulative counters (the local backends record from a worker thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(METRIC_KEYS, 0.0)

    def record_call(
        self, *, prompt_tokens: int = 0, completion_tokens: int = 0, cost_usd: float = 0.0, seconds: float = 0.0
    ) -> None:
        """One HTTP call (or one local generation share) that returned or was abandoned, usable or not."""
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

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._values)
