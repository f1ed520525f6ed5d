"""Audit throughput: the whole Auditor against an HTTP teacher with a fixed per-call latency, and the
embedding similarity against calling sentence-transformers directly.

1. Latency-bound audit: B responses x M anchors x N samples through `openai_completions` to the local
   server (which adds LATENCY_S to every call). One call returns all N samples, so the ideal wall time
   at concurrency K is ceil(B*M / K) * LATENCY_S. Scheduler `uniform`, similarity `ned` (cheap), so the
   ratio measures the audit machinery. Target (issue 3): <= 1.25x.
2. Embedding throughput: `EmbeddingSimilarity.score` on all (student chunk, teacher text) pairs vs
   `SentenceTransformer.encode` of the same unique texts (the irreducible work) plus the dot products.
   Target: >= 0.9x of direct.
3. Cache: the same audit again with the SQLite cache warm; prints the hit rate and zero HTTP calls.
Not a test: run by hand or with `make bench`. The CPU is shared; ratios are measured in the same run.
"""

from __future__ import annotations

import asyncio
import math
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from omniopd_verl import registry  # noqa: E402
from omniopd_verl.audit.auditor import Auditor  # noqa: E402
from omniopd_verl.audit.types import StudentResponse  # noqa: E402
from omniopd_verl.config import OmniOPDConfig  # noqa: E402
from omniopd_verl.runtime.models import resolve_model_path  # noqa: E402
from omniopd_verl.testing import ScriptedGenerator, serve_fault_server  # noqa: E402

B, M, N, C, T = 32, 4, 4, 16, 160
CONCURRENCY, LATENCY_S = 16, 0.25


def make_responses(tokenizer) -> list[StudentResponse]:
    g = torch.Generator().manual_seed(0)
    out = []
    for b in range(B):
        ids = torch.randint(100, 20000, (T,), generator=g).tolist()
        out.append(
            StudentResponse(
                uid=f"r{b}",
                prompt_text=f"Question {b}: what is {b} + {b}?\n",
                response_ids=ids,
                logprobs_T=-torch.rand(T, generator=g),
                entropy_T=torch.rand(T, generator=g),
            )
        )
    return out


def run_audit(url: str, tokenizer, responses, cache_path: str | None) -> tuple[float, dict]:
    teacher = {"name": "openai_completions", "model": "scripted", "api_base": url, "max_concurrency": CONCURRENCY}
    if cache_path:
        teacher["cache_path"] = cache_path
    cfg = OmniOPDConfig.from_dict(
        {"chunks": M, "samples": N, "chunk_len": C, "scheduler": "uniform", "similarity": "ned", "teacher": teacher}
    )
    auditor = Auditor(cfg, tokenizer)

    async def go():
        start = time.perf_counter()
        audits = await auditor.audit(responses)
        elapsed = time.perf_counter() - start
        metrics = auditor.metrics()
        await auditor.aclose()
        assert sum(len(a.chunks) for a in audits) == len(responses) * M
        return elapsed, metrics

    return asyncio.run(go())


def bench_embedding(tokenizer) -> tuple[float, float, int]:
    sim = registry.create("similarity", "embedding")
    g = torch.Generator().manual_seed(1)
    words = [tokenizer.decode(torch.randint(100, 20000, (C,), generator=g).tolist()) for _ in range(B * M * (N + 1))]
    pairs = [(words[i * (N + 1)], words[i * (N + 1) + j]) for i in range(B * M) for j in range(1, N + 1)]
    sim.score(pairs[:8])  # load the model and warm up
    unique = sorted({t for p in pairs for t in p if t})
    best_ours, best_direct = math.inf, math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        sim.score(pairs)
        best_ours = min(best_ours, time.perf_counter() - t0)
        t0 = time.perf_counter()
        emb = sim.model.encode(unique, batch_size=sim.batch_size, convert_to_tensor=True, normalize_embeddings=True)
        index = {t: i for i, t in enumerate(unique)}
        _ = [float(emb[index[a]] @ emb[index[b]]) for a, b in pairs]
        best_direct = min(best_direct, time.perf_counter() - t0)
    return best_ours, best_direct, len(pairs)


def main() -> None:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m-instruct"))
    responses = make_responses(tokenizer)
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve_fault_server(generator=ScriptedGenerator(words=C), latency_s=LATENCY_S) as server,
    ):
        run_audit(server.url, tokenizer, responses[:2], None)  # warm imports and the connection path
        elapsed, _ = run_audit(server.url, tokenizer, responses, None)
        ideal = math.ceil(B * M / CONCURRENCY) * LATENCY_S
        cache = os.path.join(tmp, "teacher.sqlite")
        run_audit(server.url, tokenizer, responses, cache)
        calls_before = server.calls("/v1/completions")
        _, metrics = run_audit(server.url, tokenizer, responses, cache)
        rerun_calls = server.calls("/v1/completions") - calls_before
    hits = metrics.get("teacher/cache_hits", 0.0)
    print(f"audit: B={B} responses x M={M} anchors x N={N} samples, latency {LATENCY_S}s, concurrency {CONCURRENCY}")
    print(
        f"  measured {elapsed:.2f}s vs latency-bound ideal {ideal:.2f}s: ratio {elapsed / ideal:.3f} (target <= 1.25)"
    )
    print(
        f"  rerun with warm cache: {hits:.0f}/{B * M} requests from cache ({hits / (B * M):.0%}), {rerun_calls} HTTP calls"
    )
    ours, direct, n_pairs = bench_embedding(tokenizer)
    print(f"embedding similarity on {n_pairs} pairs: ours {ours:.3f}s, direct encode {direct:.3f}s")
    print(f"  throughput ratio (direct / ours): {direct / ours:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
