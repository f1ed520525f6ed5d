"""A stand-in for verl's reward workers, for the ledger's tests and benchmark: a Ray actor per worker,
each with its own teacher library (its own HTTP client) connected to the run's ledger actor, exactly as
`OmniOPDRewardManager` connects (`verl_integration.run_ledger`).

    worker = ray.remote(TeacherWorker).remote(teacher_config_dict, run_id, state_path, cache_path, overrides)
    ray.get(worker.sample.remote(start=0, count=10, n=2))   # -> {"ok": k, "failed": f, "stopped": None or [type, msg]}
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from omniopd_verl.protocols import TeacherRequest


def request(i: int, n: int, student_tokens: int = 4) -> TeacherRequest:
    return TeacherRequest(
        request_id=f"uid{i}:{5 + i}",
        prompt_text=f"Question {i}? Answer:",
        response_prefix=" The answer is",
        n=n,
        student_tokens=student_tokens,
        seed=1000 + i,
    )


class TeacherWorker:
    """One worker process: a teacher library on the run's ledger (see the module docstring)."""

    def __init__(
        self,
        teacher: dict[str, Any],
        run_id: str,
        state_path: str | None,
        cache_path: str | None,
        overrides: dict[str, Any] | None = None,
    ):
        from omniopd_verl import registry
        from omniopd_verl.config import TeacherConfig
        from omniopd_verl.teachers.ledger import LedgerSettings
        from omniopd_verl.teachers.ledger.actor import ensure_run_ledger

        config = TeacherConfig(**teacher)
        settings = LedgerSettings.from_teacher_config(config, **(overrides or {}))
        self.ledger = ensure_run_ledger(settings, run_id, state_path=state_path, cache_path=cache_path)
        self.teacher = registry.create_teacher(config, ledger=self.ledger)

    async def sample(
        self, start: int, count: int, n: int, student_tokens: int = 4, stagger_s: float | None = None
    ) -> dict[str, Any]:
        """`count` requests in one `sample` call, or (stagger_s) each in its own `sample` call, started
        stagger_s after the previous one whether or not it has finished (as verl's reward loop calls the reward
        manager once per trajectory)."""
        from omniopd_verl.errors import OmniOPDError

        requests = [request(i, n, student_tokens) for i in range(start, start + count)]

        async def later(k: int, r: TeacherRequest):
            await asyncio.sleep(k * stagger_s)
            return (await self.teacher.sample([r]))[0]

        try:
            if stagger_s is not None:
                results = await asyncio.gather(*(later(k, r) for k, r in enumerate(requests)))
            else:
                results = await self.teacher.sample(requests)
        except OmniOPDError as exc:
            return {"ok": 0, "failed": 0, "stopped": [type(exc).__name__, str(exc)]}
        return {
            "ok": sum(r.texts is not None for r in results),
            "failed": sum(r.texts is None for r in results),
            "stopped": None,
        }

    async def admit_many(self, count: int, concurrent: int) -> list[float]:
        """Admission latencies (s) of `count` admit+settle pairs, `concurrent` at a time (benchmark)."""
        import time

        latencies: list[float] = []

        async def one() -> None:
            t0 = time.perf_counter()
            grant = await self.ledger.admit(None, 0.0, slot=False)
            latencies.append(time.perf_counter() - t0)
            await self.ledger.settle(grant, outcome="ok")

        for _ in range(0, count, concurrent):
            await asyncio.gather(*(one() for _ in range(concurrent)))
        await self.ledger.release()
        return latencies

    async def admit_paced(self, count: int, interval_s: float, offset_s: float) -> list[tuple[float, float]]:
        """(admit, settle) latencies (s) of `count` admit+settle pairs started every `interval_s` seconds
        after `offset_s`, whether or not the earlier ones have finished (an open loop, as calls arrive in an
        audit; benchmark)."""
        import time

        pairs: list[tuple[float, float]] = []

        async def one() -> None:
            t0 = time.perf_counter()
            grant = await self.ledger.admit(None, 0.0, slot=False)
            t1 = time.perf_counter()
            await self.ledger.settle(grant, outcome="ok")
            pairs.append((t1 - t0, time.perf_counter() - t1))

        start = time.perf_counter() + offset_s
        tasks = []
        for i in range(count):
            delay = start + i * interval_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
        await self.ledger.release()
        return pairs

    def actor_calls(self) -> int:
        return self.ledger.actor_calls

    def leased_admits(self) -> int:
        return self.ledger.leased_admits

    def pid(self) -> int:
        return os.getpid()


def open_paths(pid: int) -> list[str]:
    """The files process `pid` holds open (Linux /proc)."""
    out = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
    except OSError:
        pass
    return out
