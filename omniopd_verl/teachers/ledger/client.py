"""The ledger as the teacher library sees it: one async protocol, two placements.

- `InProcessLedger`: the `LedgerCore` in this process (the audit CLI, the local engine, tests): direct
  calls, no copies.
- `RayLedger`: the same `LedgerCore` inside the run's named Ray actor (`actor.py`), shared by verl's
  reward workers on every node. Calls made in the same event-loop turn travel together as one actor
  call per method (batched admission), so the ledger adds one local round trip per turn, not per call.

The library calls `admit` before every raw call (it returns the grant id, waits, or raises the run's
stop), `settle` after it (the real cost, and the answer to cache), `record` per finished request (the
failure-rate guard; raises the stop when it trips), `stop` on a fatal error (401/403, a rejected
parameter: every worker's queued calls stop), and `cache_get`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from typing import Any

from omniopd_verl.teachers.ledger.core import LedgerCore, stop_error

log = logging.getLogger("omniopd_verl.teachers.ledger")

MAX_WAIT_S = 1.0  # ask again at least this often: a settlement in another process frees room too


class _LoopWake:
    def __init__(self) -> None:
        self.settled = asyncio.Event()


class LedgerClient:
    """The protocol (see the module docstring). Subclasses implement `_call(method, items) -> replies`."""

    run_id: str = "local"

    def __init__(self) -> None:
        self._wakes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWake] = weakref.WeakKeyDictionary()

    async def _call(self, method: str, item: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _wake(self) -> _LoopWake:
        loop = asyncio.get_running_loop()
        wake = self._wakes.get(loop)
        if wake is None:
            wake = self._wakes[loop] = _LoopWake()
        return wake

    async def admit(self, usd: float | None, tokens: float, *, slot: bool = True) -> int:
        """Wait until the call may be sent; its grant id. Raises the run's stop (budget, auth, ...)."""
        wake = self._wake()
        while True:
            settled = wake.settled  # taken before asking: a settlement after the reply wakes us
            grant = self._take_lease(usd, tokens, slot)
            if grant is not None:
                return grant
            asked = time.monotonic()
            ask, reply = self._ask(usd, tokens, slot), None
            try:
                reply = await self._call("admit", ask)
            finally:
                self._answered(ask, reply, asked)
            if "id" in reply:
                return reply["id"]
            if "stop" in reply:
                await self.release()
                raise stop_error(reply["stop"], reply["message"])
            try:
                await asyncio.wait_for(settled.wait(), min(MAX_WAIT_S, max(1e-3, reply["wait"])))
            except asyncio.TimeoutError:
                pass

    async def settle(
        self,
        grant: int,
        *,
        outcome: str,
        cost_usd: float = 0.0,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cache: tuple[str, dict] | None = None,
    ) -> str | None:
        """Settle a granted call; returns a warning when the cache had to be dropped (None otherwise)."""
        item = {
            "id": grant,
            "outcome": outcome,
            "cost_usd": cost_usd,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cache": list(cache) if cache is not None else None,
        }
        try:
            reply = await self._call("settle", item)
        finally:
            wake = self._wake()
            wake.settled.set()
            wake.settled = asyncio.Event()
        return reply.get("cache_dropped")

    async def record(self, *, cause: str | None, cached: bool, retries: int) -> Exception | None:
        """One finished request; the run's stop (the failure-rate guard's, or any) as an exception, or None."""
        reply = await self._call("record", {"cause": cause, "cached": cached, "retries": retries})
        return None if reply is None else stop_error(reply["stop"], reply["message"])

    async def stop(self, kind: str, message: str) -> Exception:
        """Stop the run's calls; the exception every caller raises (the first stop's)."""
        reply = await self._call("stop", [kind, message])
        return stop_error(reply["stop"], reply["message"])

    async def cache_get(self, key: str) -> Any:
        return await self._call("cache_get", key)

    async def cache_put(self, key: str, value: dict) -> str | None:
        reply = await self._call("cache_put", (key, value))
        return reply.get("cache_dropped")

    def _ask(self, usd: float | None, tokens: float, slot: bool) -> dict[str, Any]:
        return {"usd": usd, "tokens": tokens, "slot": slot}

    def _take_lease(self, usd: float | None, tokens: float, slot: bool) -> int | None:
        """A pre-granted admission this call fits, if the placement keeps any."""
        return None

    def _answered(self, ask: dict[str, Any], reply: dict[str, Any] | None, asked: float) -> None:
        """The ledger answered this ask (reply None: the call failed); keep the pre-granted admissions a reply
        carries (only a placement that asks for them gets any)."""

    async def release(self) -> None:
        """Hand back this process's unused pre-granted admissions (none where the placement asks for none)."""

    def metrics(self) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def status(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        pass


class InProcessLedger(LedgerClient):
    """The ledger in this process (see the module docstring)."""

    def __init__(self, core: LedgerCore):
        super().__init__()
        self.core = core
        self.run_id = core.run_id

    async def _call(self, method: str, item: Any) -> Any:
        return _dispatch(self.core, method, [item])[0]

    @property
    def has_cache(self) -> bool:
        return self.core.cache is not None

    def metrics(self) -> dict[str, float]:
        return self.core.metrics()

    def status(self) -> dict[str, Any]:
        return self.core.status()

    def close(self) -> None:
        self.core.close()


def _dispatch(core: LedgerCore, method: str, items: list[Any]) -> list[Any]:
    """Run a batch of one method's items on the core; one reply per item."""
    if method == "admit":
        return core.admit(items)
    if method == "settle":
        reply = core.settle(items)
        return [reply] * len(items)
    if method == "record":
        reply = core.record(items)
        return [reply] * len(items)
    if method == "stop":
        return [core.stop(kind, message) for kind, message in items]
    if method == "cache_get":
        return core.cache_get(items)
    if method == "cache_put":
        reply = core.cache_put(items)
        return [reply] * len(items)
    raise ValueError(f"unknown ledger method {method!r}")


class _Batcher:
    """Per event loop: items of one method queued in the same turn go to the actor as one call."""

    def __init__(self) -> None:
        self.pending: dict[str, list[tuple[Any, asyncio.Future]]] = {}
        self.flusher: asyncio.Task | None = None


class RayLedger(LedgerClient):
    """A handle on the run's ledger actor (actor.py), batching calls per event-loop turn, with leases.

    A lease: when this process has no pre-granted admission left, its next admission asks the actor for up
    to LEASE_SIZE more, sized like that call (the actor grants them only far from every limit:
    `LedgerCore._lease`). The next calls that fit one are admitted here, without a round trip, within the
    lease's time (lease_ttl_s from when it was asked for); the unused ones go back when they expire, when
    `release()` is called (the library does when its last concurrent `sample` ends), on any stop, and after a failed
    call (so that the next calls meet the circuit breaker in the actor). What a lease changes: a few calls
    may still be sent after another worker's stop (at most the lease, within its time); a worker killed
    holding a lease has it charged at its worst case, like a call it was making."""

    LEASE_SIZE = 8

    def __init__(self, handle: Any, run_id: str, has_cache: bool):
        super().__init__()
        self.handle = handle
        self.run_id = run_id
        self.has_cache = has_cache
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batcher] = weakref.WeakKeyDictionary()
        self.actor_calls = 0  # how many actor calls carried the items (the batching's effect, for benchmarks)
        self.leased_admits = 0  # admissions served from a lease, without a round trip (for benchmarks)
        # (id, usd, tokens, slot, use-by on time.monotonic)
        self._leases: list[tuple[int, float, float, bool, float]] = []
        self._lease_asked = False  # one lease request in flight at a time
        self._lock = threading.Lock()  # the leases may be taken from more than one event loop
        self._returns: set[asyncio.Future] = set()

    def _take_lease(self, usd: float | None, tokens: float, slot: bool) -> int | None:
        now = time.monotonic()
        with self._lock:
            expired = [lease[0] for lease in self._leases if lease[4] <= now]
            self._leases = [lease for lease in self._leases if lease[4] > now]
            taken = None
            for i, (key, lease_usd, lease_tokens, lease_slot, _) in enumerate(self._leases):
                if lease_slot == slot and (usd or 0.0) <= (lease_usd or 0.0) and tokens <= lease_tokens:
                    del self._leases[i]
                    self.leased_admits += 1
                    taken = key
                    break
        if expired:  # handed back in the background; release() at the end of a sample() waits for them
            task = asyncio.ensure_future(self._hand_back(expired))
            self._returns.add(task)
            task.add_done_callback(self._returns.discard)
        return taken

    def _ask(self, usd: float | None, tokens: float, slot: bool) -> dict[str, Any]:
        ask = super()._ask(usd, tokens, slot)
        with self._lock:
            if not self._leases and not self._lease_asked:
                self._lease_asked = True
                ask["lease"] = self.LEASE_SIZE
        return ask

    def _answered(self, ask: dict[str, Any], reply: dict[str, Any] | None, asked: float) -> None:
        if "lease" not in ask:
            return
        with self._lock:
            self._lease_asked = False
            if reply and "lease" in reply:
                use_by = asked + reply["lease_ttl_s"]  # asked before the actor granted it: never later than its clock
                for key in reply["lease"]:
                    self._leases.append((key, reply["lease_usd"], reply["lease_tokens"], ask["slot"], use_by))

    async def _hand_back(self, keys: list[int]) -> None:
        await asyncio.gather(*(self.settle(key, outcome="unused") for key in keys))

    async def release(self) -> None:
        with self._lock:
            keys = [lease[0] for lease in self._leases]
            self._leases = []
        if keys:
            await self._hand_back(keys)
        if self._returns:
            await asyncio.gather(*list(self._returns), return_exceptions=True)

    async def settle(self, grant: int, *, outcome: str, **kwargs: Any) -> str | None:
        dropped = await super().settle(grant, outcome=outcome, **kwargs)
        if outcome in ("transient", "fail", "abandoned"):
            await self.release()
        return dropped

    async def stop(self, kind: str, message: str) -> Exception:
        await self.release()
        return await super().stop(kind, message)

    async def _call(self, method: str, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = _Batcher()
        future = loop.create_future()
        batcher.pending.setdefault(method, []).append((item, future))
        if batcher.flusher is None or batcher.flusher.done():
            batcher.flusher = asyncio.ensure_future(self._flush(batcher))
        return await future

    async def _flush(self, batcher: _Batcher) -> None:
        await asyncio.sleep(0)  # let the callers of this turn queue theirs
        while batcher.pending:
            taken, batcher.pending = batcher.pending, {}
            await asyncio.gather(*(self._send(method, entries) for method, entries in taken.items()))

    async def _send(self, method: str, entries: list[tuple[Any, asyncio.Future]]) -> None:
        self.actor_calls += 1
        try:
            replies = await self.handle.call.remote(method, [item for item, _ in entries])
        except BaseException as exc:  # every caller learns why (an actor that died and could not restart)
            for _, future in entries:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), reply in zip(entries, replies, strict=True):
            if not future.done():
                future.set_result(reply)

    def metrics(self) -> dict[str, float]:
        import ray

        return ray.get(self.handle.call.remote("metrics", None))

    def status(self) -> dict[str, Any]:
        import ray

        return ray.get(self.handle.call.remote("status", None))
