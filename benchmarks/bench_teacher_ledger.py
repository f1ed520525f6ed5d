"""The run's teacher ledger under load: admission latency from 16 worker processes, and what it adds to
an audit's teacher phase. Not a test: run by hand (`python benchmarks/bench_teacher_ledger.py`).

1. 16 `TeacherWorker` Ray actors (separate processes, as verl's reward workers) each admit and settle
   ADMITS raw calls, CONCURRENT at a time, against one ledger actor: admission latency p50 / p99, and
   how many actor calls carried them (the batching per event-loop turn).
2. The teacher phase of an audit at B=256 responses, M=N=10 (2,560 raw calls of n=10), 1 s server
   latency, max_concurrency=512: wall time with the in-process ledger vs the Ray ledger actor.
Options: --workers, --admits, --concurrent, --b, --latency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time


def admission(ray, workers: int, admits: int, concurrent: int, rates: list[float], paced_s: float) -> None:
    from omniopd_verl.config import TeacherConfig
    from omniopd_verl.teachers.ledger import LedgerSettings
    from omniopd_verl.teachers.ledger.actor import ensure_run_ledger
    from omniopd_verl.testing.ledger_workers import TeacherWorker

    teacher = dict(name="openai_completions", model="m", api_base="http://127.0.0.1:9/v1", max_concurrency=10_000)
    driver = ensure_run_ledger(  # noqa: F841 - the owner keeps the actor alive
        LedgerSettings.from_teacher_config(TeacherConfig(**teacher)),
        "bench",
        state_path="/tmp/bench_ledger.json",
        cache_path=None,
        pin_to_this_node=True,
    )
    actor = ray.remote(TeacherWorker).options(num_cpus=0)
    pool = [actor.remote(teacher, "bench", "/tmp/bench_ledger.json", None, None) for _ in range(workers)]
    ray.get([w.pid.remote() for w in pool])
    start = time.perf_counter()
    latencies = [x for part in ray.get([w.admit_many.remote(admits, concurrent) for w in pool]) for x in part]
    elapsed = time.perf_counter() - start
    calls = sum(ray.get([w.actor_calls.remote() for w in pool]))
    leased = sum(ray.get([w.leased_admits.remote() for w in pool]))
    latencies.sort()
    p50 = statistics.median(latencies) * 1e3
    p99 = latencies[int(0.99 * (len(latencies) - 1))] * 1e3
    print(
        f"admission: {workers} workers x {admits} admits ({concurrent} at a time): p50 {p50:.2f} ms, p99 {p99:.2f} ms; "
        f"{len(latencies) / elapsed:.0f} admit+settle pairs/s; {calls} actor calls; {leased} admissions from a lease"
    )
    for rate in rates:  # an open loop: admissions arrive at `rate` per second run-wide, as in an audit
        interval = workers / rate
        count = max(1, int(rate * paced_s / workers))
        before = sum(ray.get([w.leased_admits.remote() for w in pool]))
        parts = ray.get([w.admit_paced.remote(count, interval, i * interval / workers) for i, w in enumerate(pool)])
        leased = sum(ray.get([w.leased_admits.remote() for w in pool])) - before
        admit = sorted(a for part in parts for a, _ in part)
        settle = sorted(s for part in parts for _, s in part)
        total = sorted(a + s for part in parts for a, s in part)

        def pct(xs: list[float], q: float) -> float:
            return 1e3 * xs[int(q * (len(xs) - 1))]

        print(
            f"paced: {rate:g} admissions/s from {workers} workers for {paced_s:g} s ({len(admit)} pairs): admission "
            f"p50 {pct(admit, 0.5):.2f} ms, p99 {pct(admit, 0.99):.2f} ms; settle p50 {pct(settle, 0.5):.2f} ms; "
            f"admit+settle p50 {pct(total, 0.5):.2f} ms, p99 {pct(total, 0.99):.2f} ms; {leased} from a lease"
        )
    for w in pool:
        ray.kill(w)


def audit_phase(ray, b: int, latency: float) -> None:
    from omniopd_verl import registry
    from omniopd_verl.config import TeacherConfig
    from omniopd_verl.protocols import TeacherRequest
    from omniopd_verl.teachers.ledger import LedgerSettings
    from omniopd_verl.teachers.ledger.actor import ensure_run_ledger
    from omniopd_verl.testing import serve_fault_server

    M, N = 10, 10
    requests = [
        TeacherRequest(f"r{i}:{m}", f"Question {i}?", f" partial {m}", n=N, student_tokens=50, seed=i * M + m)
        for i in range(b)
        for m in range(M)
    ]
    with serve_fault_server(latency_s=latency, max_connections=1024) as server:  # 512 in flight, none refused
        cfg = TeacherConfig(name="openai_completions", model="local-teacher", api_base=server.url, max_concurrency=512)
        timings = {}
        for placement in ("in-process", "ray actor"):
            ledger = None
            if placement == "ray actor":
                ledger = ensure_run_ledger(
                    LedgerSettings.from_teacher_config(cfg),
                    f"bench-audit-{time.time()}",
                    state_path=None,
                    cache_path=None,
                    pin_to_this_node=True,
                )
            teacher = registry.create_teacher(cfg, ledger=ledger)

            async def run(teacher=teacher) -> float:
                await teacher.sample(requests[:2])  # warm the connection pool
                start = time.perf_counter()
                await teacher.sample(requests)
                return time.perf_counter() - start

            timings[placement] = asyncio.run(run())
        ideal = -(-len(requests) // 512) * latency
        print(
            f"audit teacher phase, B={b} M={M} N={N} ({len(requests)} calls), {latency:g} s latency, concurrency 512: "
            f"in-process ledger {timings['in-process']:.2f} s, Ray ledger {timings['ray actor']:.2f} s "
            f"(ratio {timings['ray actor'] / timings['in-process']:.3f}; ideal {ideal:.1f} s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--admits", type=int, default=320)
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument(
        "--rates",
        type=lambda text: [float(x) for x in text.split(",")],
        default=[83.0, 500.0, 1000.0],
        help="paced admissions per second run-wide (5,000 raw calls per step over 60 s, over 10 s, and twice that)",
    )
    parser.add_argument("--paced-s", type=float, default=10.0, help="seconds each paced rate runs")
    parser.add_argument("--b", type=int, default=256)
    parser.add_argument("--latency", type=float, default=1.0)
    args = parser.parse_args()
    import os

    import ray

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": repo}})
    try:
        admission(ray, args.workers, args.admits, args.concurrent, args.rates, args.paced_s)
        audit_phase(ray, args.b, args.latency)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
