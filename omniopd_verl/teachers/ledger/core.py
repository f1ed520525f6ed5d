"""LedgerCore: the run's one account of teacher calls. Synchronous, thread-safe, no Ray: the same object
runs in-process (audit CLI, local engine) and inside the Ray actor that verl's reward workers share.

It owns, for every raw call of the run:
- the budget (`accounting.Budget`, unchanged): admission reserves the call's worst case, settlement
  replaces it by the real cost;
- requests_per_minute / tokens_per_minute (`limits.RateWindow`: never more than the setting in any 60 s)
  and max_concurrency (raw calls in flight, run-wide);
- teacher health: a circuit breaker on consecutive transient failures (every worker waits together),
  and the failure-rate guard (omniopd.teacher.max_failure_rate) that stops the run naming the most common
  cause; a fatal error one worker sees (401/403, a rejected parameter) stops every worker's queued calls;
- the run's teacher metrics (`teacher_run/*`, cumulative);
- the cache: the only process that opens the SQLite file (workers read and write through it);
- a state file (`state_path`): spend, reservations, metrics and rate windows, rewritten atomically after
  every change, so a restarted ledger or a resumed run continues the same budget.

Requests and replies are plain dicts (they cross Ray): see `admit`, `settle`, `record`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omniopd_verl.errors import OmniOPDError
from omniopd_verl.teachers.accounting import Budget, Reservation, TeacherBudgetExceeded
from omniopd_verl.teachers.ledger.limits import WINDOW_S, CircuitBreaker, FailureGuard, RateWindow

log = logging.getLogger("omniopd_verl.teachers.ledger")

STATE_VERSION = 1
RUN_METRICS = (
    "teacher_run/calls",
    "teacher_run/retries",
    "teacher_run/failures",
    "teacher_run/cache_hits",
    "teacher_run/prompt_tokens",
    "teacher_run/completion_tokens",
    "teacher_run/cost_usd",
    "teacher_run/abandoned_calls",
    "teacher_run/expired_reservations",
)
LEASE_MARGIN = 1.25
"""A leased grant is sized 25% above the ask that brought it (a worker's next calls have slightly longer
prompts); the excess is freed when the call settles its real cost."""
WAIT_FOR_SETTLE_S = 0.25
"""How long a caller waits before asking again when only a settlement can make room (it is also woken
by its own process's settlements)."""


class TeacherRunStopped(OmniOPDError, RuntimeError):
    """The ledger stopped the run's teacher calls: too many failed requests (max_failure_rate), or a
    fatal error another worker saw. The message names the cause."""


class TeacherRequestRejected(OmniOPDError, RuntimeError):
    """The teacher refused a parameter it does not support (HTTP 400): every call would fail the same way."""


STOP_ERRORS: dict[str, type[Exception]] = {
    "budget": TeacherBudgetExceeded,
    "failure_rate": TeacherRunStopped,
    "rejected": TeacherRequestRejected,
}


def stop_error(kind: str, message: str) -> Exception:
    if kind == "auth":
        from omniopd_verl.teachers.reliability import TeacherAuthError

        return TeacherAuthError(message)
    return STOP_ERRORS.get(kind, TeacherRunStopped)(message)


@dataclass(frozen=True)
class LedgerSettings:
    """The run-wide limits, from omniopd.teacher (`from_teacher_config`)."""

    max_cost_usd: float | None = None
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_concurrency: int = 16
    max_failure_rate: float = 0.5
    reservation_expiry_s: float = 600.0  # a reservation nobody settles (its worker died) is charged after this
    window_s: float = WINDOW_S  # the rate limits' window; only tests shorten it
    breaker_threshold: int = 5
    breaker_base_s: float = 1.0
    breaker_max_s: float = 60.0
    save_every_s: float = 0.1  # the state file is rewritten at most this often (a write costs ~1 ms)
    # A lease (see `LedgerCore._lease`) is used within this long after its grant or handed back. Its rate-window
    # entries are dated at the end of that time: a leased call sent at any moment of it is still inside every
    # window the ledger counts, so the windows hold exactly as for grants made one by one. Only tests change it.
    lease_ttl_s: float = 0.5

    @classmethod
    def from_teacher_config(cls, config: Any, **overrides: Any) -> LedgerSettings:
        values = dict(
            max_cost_usd=config.max_cost_usd,
            requests_per_minute=config.requests_per_minute,
            tokens_per_minute=config.tokens_per_minute,
            max_concurrency=config.max_concurrency,
            # with on_failure='error' the first failed request stops the run, naming the teacher and the cause
            # (TeacherFailureError); the guard (>= 8 requests) would only race it with a message that names no
            # teacher: in verl a step's failures reach the ledger in one batch. 1.0 = the guard never trips.
            max_failure_rate=(
                1.0 if getattr(config, "on_failure", "drop") == "error" else getattr(config, "max_failure_rate", 0.5)
            ),
            # a call lasts at most timeout_s (+1 s backstop): a reservation older than that with a margin
            # belongs to a worker that died mid-call; the provider may still bill it
            reservation_expiry_s=float(config.timeout_s) + 1.0 + 60.0,
        )
        values.update(overrides)
        return cls(**values)


class LedgerCore:
    """See the module docstring. Every public method takes and returns plain data."""

    def __init__(
        self,
        settings: LedgerSettings,
        *,
        run_id: str = "local",
        state_path: str | os.PathLike | None = None,
        cache: Any = None,
        restarted: bool = False,
        clock=time.time,
    ):
        self.settings = settings
        self.run_id = run_id
        self.state_path = Path(state_path) if state_path else None
        self.cache = cache  # a TeacherCache (or None): opened by whoever places the ledger
        self._clock = clock
        self._lock = threading.Lock()
        self.budget = Budget(settings.max_cost_usd)
        self._reservations: dict[int, dict[str, Any]] = {}  # id -> {usd, worst_usd, t, slot}
        self._live: dict[int, Reservation] = {}
        self._rpm = (
            RateWindow(settings.requests_per_minute, settings.window_s) if settings.requests_per_minute else None
        )
        self._tpm = RateWindow(settings.tokens_per_minute, settings.window_s) if settings.tokens_per_minute else None
        self.breaker = CircuitBreaker(settings.breaker_threshold, settings.breaker_base_s, settings.breaker_max_s)
        self.guard = FailureGuard(settings.max_failure_rate)
        self.metrics_ = dict.fromkeys(RUN_METRICS, 0.0)
        self.stopped: tuple[str, str] | None = None
        self._next_id = 1
        self.in_flight_max = 0  # the most calls ever in flight at once (the overshoot bound's n)
        self._last_ok = False  # the last call settled succeeded: leases only then (see _lease)
        self._dirty = False
        self._saved_at = 0.0
        if self.state_path is not None:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            if self.state_path.exists():
                self._load(restarted)
            # a change is on disk within save_every_s even when no further call comes to write it
            threading.Thread(target=self._flush_loop, name="ledger-state", daemon=True).start()

    # ------------------------------------------------------------------ admission

    def admit(self, asks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """One reply per ask ({"usd": worst case or None, "tokens": TPM estimate, "slot": bool, and
        optionally "lease": k}): {"id": n} (send the call), {"wait": seconds} (ask again then, or after a
        settlement), or {"stop": kind, "message": text} (no call is sent; raise). A granted ask with "lease"
        may also carry {"lease": [ids], "lease_usd", "lease_tokens", "lease_ttl_s"} (see `_lease`)."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            replies = []
            for ask in asks:
                reply = self._admit_one(ask, now)
                if "id" in reply and ask.get("lease"):
                    reply.update(self._lease(ask, now))
                replies.append(reply)
            if any("id" in r for r in replies):
                self._save()
            return replies

    def _admit_one(self, ask: dict[str, Any], now: float) -> dict[str, Any]:
        if self.stopped is not None:
            return {"stop": self.stopped[0], "message": self.stopped[1]}
        wait = self.breaker.wait_s(now)
        if wait > 0:
            return {"wait": wait}
        slot = bool(ask.get("slot", True))
        if slot and self._slots() >= self.settings.max_concurrency:
            return {"wait": WAIT_FOR_SETTLE_S}
        tokens = float(ask.get("tokens") or 0.0)
        for window, amount in ((self._rpm, 1.0), (self._tpm, tokens)):
            if window is not None:
                wait = window.wait_s(amount, now)
                if wait > 0:
                    return {"wait": wait}
        try:
            reservation = self.budget.reserve(ask.get("usd"))
        except TeacherBudgetExceeded as exc:
            self.stopped = ("budget", str(exc))
            return {"stop": "budget", "message": str(exc)}
        if reservation is None:
            return {"wait": WAIT_FOR_SETTLE_S}
        return {"id": self._grant(reservation, ask.get("usd"), slot, tokens, now, dated=now)}

    def _grant(
        self, reservation: Reservation, worst: float | None, slot: bool, tokens: float, now: float, *, dated: float
    ) -> int:
        """Record a granted call (its budget reservation made): its id, counted in flight and in the rate
        windows, whose entries are dated `dated` (a lease's: the end of its time)."""
        key = self._next_id
        self._next_id += 1
        self._live[key] = reservation
        self._reservations[key] = {"usd": reservation.usd, "worst_usd": worst or 0.0, "t": now, "slot": slot}
        for window, amount in ((self._rpm, 1.0), (self._tpm, tokens)):
            if window is not None:
                window.add(key, amount, dated)
        self.in_flight_max = max(self.in_flight_max, len(self._reservations))
        return key

    def _lease(self, ask: dict[str, Any], now: float) -> dict[str, Any]:
        """Up to ask["lease"] more grants sized LEASE_MARGIN x this ask, for the asking worker to use without a
        round trip during settings.lease_ttl_s (it hands back the unused ones with outcome "unused"). Only while the run
        is far from every limit: counting the lease, at most half of max_concurrency, of each rate window and
        of the budget left is in use, and the last call settled succeeded (none before the run's first success:
        a wrong key or a rejected parameter fails from the first call, and then every queued call meets the
        stop in the ledger). Near a limit every call is admitted one by one, exactly as without leases."""
        if self.stopped is not None or not self._last_ok or self.breaker.wait_s(now) > 0:
            return {}
        slot = bool(ask.get("slot", True))
        usd = None if ask.get("usd") is None else LEASE_MARGIN * float(ask["usd"])
        tokens = LEASE_MARGIN * float(ask.get("tokens") or 0.0)
        room = [int(ask["lease"])]
        if slot:
            room.append(self.settings.max_concurrency // 2 - self._slots())
        for window, amount in ((self._rpm, 1.0), (self._tpm, tokens)):
            if window is not None and amount > 0:
                room.append(int((window.limit / 2 - window.in_window(now)) // window.cap(amount)))
        if self.budget.max_cost_usd is not None and usd:
            left = self.budget.max_cost_usd - self.budget.spent_usd - self.budget.reserved_usd
            room.append(int((left / 2) // usd))
        count = max(0, min(room))
        # each fits: at most half of what is left
        ids = [
            self._grant(self.budget.reserve(usd), usd, slot, tokens, now, dated=now + self.settings.lease_ttl_s)
            for _ in range(count)
        ]
        if not ids:
            return {}
        return {"lease": ids, "lease_usd": usd, "lease_tokens": tokens, "lease_ttl_s": self.settings.lease_ttl_s}

    def _slots(self) -> int:
        return sum(1 for r in self._reservations.values() if r["slot"])

    def _expire(self, now: float) -> None:
        """Charge reservations nobody settled in time at their worst case: their worker died mid-call."""
        limit = self.settings.reservation_expiry_s
        for key in [k for k, r in self._reservations.items() if now - r["t"] > limit]:
            entry = self._reservations.pop(key)
            self.budget.settle(self._live.pop(key, Reservation(entry["usd"])), entry["worst_usd"])
            self.metrics_["teacher_run/expired_reservations"] += 1
            self.metrics_["teacher_run/cost_usd"] += entry["worst_usd"]
            log.warning(
                "teacher ledger %s: a reservation of $%.6f was never settled (its worker died mid-call); charged "
                "at its worst case",
                self.run_id,
                entry["worst_usd"],
            )

    # ------------------------------------------------------------------ settlement and outcomes

    def settle(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Settle raw calls: {"id", "outcome": ok|transient|fail|abandoned|cancelled|unused, "cost_usd",
        "prompt_tokens", "completion_tokens", "cache": [key, value] or None}. The answer is cached in the
        same step as its cost is counted, so a worker killed after settling loses nothing it paid for.
        Returns {"cache_dropped": message or None}."""
        dropped = None
        with self._lock:
            now = self._clock()
            m = self.metrics_
            for item in items:
                key = item.get("id")
                cost = float(item.get("cost_usd") or 0.0)
                entry = self._reservations.pop(key, None)
                reservation = self._live.pop(key, None) or Reservation(entry["usd"] if entry else 0.0)
                self.budget.settle(reservation, cost)
                outcome = item.get("outcome", "ok")
                if outcome == "unused":  # a leased grant handed back unsent: it used nothing
                    for window in (self._rpm, self._tpm):
                        if window is not None:
                            window.adjust(key, 0.0)
                    continue
                if outcome != "cancelled":
                    m["teacher_run/calls"] += 1
                    m["teacher_run/prompt_tokens"] += item.get("prompt_tokens", 0)
                    m["teacher_run/completion_tokens"] += item.get("completion_tokens", 0)
                    m["teacher_run/cost_usd"] += cost
                if outcome == "abandoned":
                    m["teacher_run/abandoned_calls"] += 1
                if self._tpm is not None and outcome in ("ok", "abandoned"):
                    self._tpm.adjust(key, item.get("prompt_tokens", 0) + item.get("completion_tokens", 0))
                if outcome != "cancelled":
                    self._last_ok = outcome == "ok"
                if outcome == "ok":
                    self.breaker.success()
                elif outcome in ("transient", "abandoned"):
                    self.breaker.transient(now)
                if item.get("cache") and self.cache is not None:
                    dropped = self._put(*item["cache"]) or dropped
            self._save()
        return {"cache_dropped": dropped}

    def record(self, requests: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
        """Finished teacher requests ({"cause": None or why it failed, "cached": bool, "retries": int}):
        counted, and judged by the failure-rate guard. Returns the stop ({"stop", "message"}) if any."""
        with self._lock:
            m = self.metrics_
            for r in requests:
                m["teacher_run/retries"] += r.get("retries", 0)
                m["teacher_run/failures"] += r.get("cause") is not None
                m["teacher_run/cache_hits"] += bool(r.get("cached"))
            message = self.guard.record(r.get("cause") for r in requests if not r.get("cached"))
            if message is not None and self.stopped is None:
                self.stopped = ("failure_rate", message)
            self._save()
            return None if self.stopped is None else {"stop": self.stopped[0], "message": self.stopped[1]}

    def stop(self, kind: str, message: str) -> dict[str, Any]:
        """Stop every worker's next admission (a 401/403 or a rejected parameter seen by one worker).
        The first stop wins: its message is the one every caller raises."""
        with self._lock:
            if self.stopped is None:
                self.stopped = (kind, message)
                self._save(force=True)
            return {"stop": self.stopped[0], "message": self.stopped[1]}

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "stopped": None if self.stopped is None else list(self.stopped),
                "spent_usd": self.budget.spent_usd,
                "reserved_usd": self.budget.reserved_usd,
                "in_flight": len(self._reservations),
                "in_flight_max": self.in_flight_max,
            }

    def metrics(self) -> dict[str, float]:
        with self._lock:
            out = dict(self.metrics_)
            out["teacher_run/spent_usd"] = self.budget.spent_usd  # what the budget counts (includes expiries)
            out["teacher_run/in_flight"] = float(len(self._reservations))
            out["teacher_run/breaker_trips"] = float(self.breaker.trips)
            return out

    # ------------------------------------------------------------------ cache

    def cache_get(self, keys: Sequence[str]) -> list[Any]:
        """The stored value per key: None (absent or unreadable) or {"__invalid__": why} (not JSON)."""
        from omniopd_verl.teachers.cache import InvalidEntry

        out: list[Any] = []
        for key in keys:
            cache = self.cache
            if cache is None:
                out.append(None)
                continue
            try:
                out.append(cache.get(key))
            except InvalidEntry as exc:
                out.append({"__invalid__": str(exc)})
            except sqlite3.Error as exc:
                log.warning("teacher cache %s cannot be read (%s): asking the teacher", cache.path, exc)
                out.append(None)
        return out

    def cache_put(self, items: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        with self._lock:
            dropped = None
            for key, value in items:
                if self.cache is not None:
                    dropped = self._put(key, value) or dropped
            return {"cache_dropped": dropped}

    def _put(self, key: str, value: dict[str, Any]) -> str | None:
        """Store one answer; a cache that cannot take it is dropped for the rest of the run (the answer is
        still used). Returns the warning when it was dropped."""
        try:
            self.cache.put(key, value)
            return None
        except (sqlite3.Error, OSError) as exc:
            cache, self.cache = self.cache, None
            message = (
                f"teacher cache {cache.path} cannot be written ({exc}): continuing WITHOUT the cache; answers "
                "from now on are used but not stored"
            )
            log.warning(message)
            cache.close()
            return message

    def close(self) -> None:
        with self._lock:
            self._save(force=True)
            if self.cache is not None:
                self.cache.close()
                self.cache = None

    # ------------------------------------------------------------------ state file

    def _state(self) -> dict[str, Any]:
        windows = {}
        for name, window in (("rpm", self._rpm), ("tpm", self._tpm)):
            if window is not None:
                windows[name] = [[k, t, a] for k, (t, a) in window._used.items()]
        return {
            "version": STATE_VERSION,
            "run_id": self.run_id,
            "spent_usd": self.budget.spent_usd,
            "reservations": {str(k): v for k, v in self._reservations.items()},
            "metrics": self.metrics_,
            "windows": windows,
            "next_id": self._next_id,
            "settings": asdict(self.settings),
        }

    def _save(self, force: bool = False) -> None:
        """Write the state file (under the lock), at most every save_every_s unless forced.

        Why a late write never lets the budget be overspent after a restart: a settlement not yet written
        leaves its reservation in the file, which is then charged at its worst case (>= the real cost);
        a grant not yet written is unknown to the restarted ledger, and its settlement adds its cost as
        is. Only a call granted and settled within the same save_every_s before a crash goes uncounted."""
        if self.state_path is None:
            return
        now = time.monotonic()
        if not force and now - self._saved_at < self.settings.save_every_s:
            self._dirty = True
            return
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(self._state()))
        os.replace(tmp, self.state_path)  # atomic: a crash leaves the old state or the new, never half
        self._saved_at, self._dirty = now, False

    def _flush_loop(self) -> None:
        while True:
            time.sleep(self.settings.save_every_s)
            with self._lock:
                if self._dirty:
                    self._save(force=True)

    def _load(self, restarted: bool) -> None:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as exc:
            from omniopd_verl.errors import ConfigError

            raise ConfigError(
                f"teacher ledger state {str(self.state_path)!r} cannot be read ({exc}): the run's spend so far is "
                "unknown; restore the file, or start a new run id (omniopd.run_id)"
            ) from None
        spent = float(state.get("spent_usd", 0.0))
        if not math.isfinite(spent) or spent < 0:
            spent = 0.0
        self.budget.spent_usd = spent
        self.metrics_.update({k: float(v) for k, v in state.get("metrics", {}).items() if k in self.metrics_})
        self._next_id = int(state.get("next_id", 1))
        reservations = {int(k): v for k, v in state.get("reservations", {}).items()}
        if restarted:  # the same run's workers are alive: they will settle what they reserved
            for key, entry in reservations.items():
                self._reservations[key] = entry
                self._live[key] = Reservation(float(entry["usd"]))
                self.budget.reserved_usd += float(entry["usd"])
        else:  # a resumed run: the calls in flight when it ended may have been billed, count them in full
            for entry in reservations.values():
                self.budget.spent_usd += float(entry["worst_usd"])
                self.metrics_["teacher_run/expired_reservations"] += 1
        for name, window in (("rpm", self._rpm), ("tpm", self._tpm)):  # a resume within the minute counts too
            for key, t, amount in state.get("windows", {}).get(name, []) if window is not None else []:
                window.add(int(key), float(amount), float(t))
        self._save(force=True)
        log.warning(
            "teacher ledger for run %r continues from %s: $%.6f spent so far%s",
            self.run_id,
            self.state_path,
            self.budget.spent_usd,
            f" of omniopd.teacher.max_cost_usd=${self.settings.max_cost_usd:g}" if self.settings.max_cost_usd else "",
        )
