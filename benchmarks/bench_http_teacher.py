"""HTTP teacher throughput: `openai_completions` against the local server with a fixed per-call latency.

The baseline is the ideal wall time of the same calls at the same concurrency (ceil(K / conc) * latency);
the ratio measures what our client machinery (the teacher library around the plugin's raw call:
concurrency limiter, retries, validation, accounting, JSON) adds.
Not a test: run by hand or with `make bench`.
"""

import asyncio
import time

from omniopd_verl import registry
from omniopd_verl.config import TeacherConfig
from omniopd_verl.teachers import TeacherRequest
from omniopd_verl.testing import serve_fault_server

LATENCY_S, CONCURRENCY, CALLS = 0.25, 16, 256


def main() -> None:
    with serve_fault_server(latency_s=LATENCY_S) as server:
        cfg = TeacherConfig(name="openai_completions", model="tiny", api_base=server.url, max_concurrency=CONCURRENCY)
        teacher = registry.create_teacher(cfg)  # the plugin wrapped in the teacher library, as engines get it
        requests = [TeacherRequest(f"a{i}", f"p{i}", "q", n=4, student_tokens=8, seed=i) for i in range(CALLS)]

        async def run() -> float:
            await teacher.sample(requests[:2])  # warm the connection pool
            start = time.perf_counter()
            await teacher.sample(requests)
            elapsed = time.perf_counter() - start
            await teacher.aclose()
            return elapsed

        elapsed = asyncio.run(run())
    ideal = -(-CALLS // CONCURRENCY) * LATENCY_S
    print(f"{CALLS} calls, latency {LATENCY_S}s, concurrency {CONCURRENCY}: {elapsed:.2f}s vs ideal {ideal:.2f}s")
    print(f"overhead ratio (measured / ideal): {elapsed / ideal:.3f}")


if __name__ == "__main__":
    main()
