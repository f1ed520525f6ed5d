"""The Auditor: finished student responses -> audited chunks with weights pi_hat (ALGORITHM.md steps 2-5).

Per response: anchors from the scheduler plugin -> one TeacherRequest per anchor (the prefix
x + y_<t, never the chunk; seeds from a stable hash of (config seed, seed_key or uid, anchor)), sent to the
teacher in ascending anchor order as one call -> teacher texts trimmed to the chunk's length in
student tokens -> similarity phi(student chunk, teacher text) -> k_sem = soft_acceptance,
pi_bar = chunk_pi_bar of the chunk's log-probs, pi_hat = dirichlet_posterior_mean.

`audit(responses)` runs the teacher calls of all responses concurrently and then scores every
(student chunk, teacher text) pair of the batch in one de-duplicated similarity call.
`audit_one(response)` starts as soon as one response is finished (streaming); concurrent
`audit_one` calls share similarity calls: pairs that arrive while one call runs go into the next.

A teacher result without texts (after the backend's retries) is never scored: with
teacher.on_failure='error' the audit raises TeacherFailureError, with 'drop' the anchor is dropped
and counted (ResponseAudit.anchors_dropped, metric audit/anchors_dropped).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from omniopd_verl import registry
from omniopd_verl.audit.text import ResponseText, trim_to_student_tokens
from omniopd_verl.audit.types import ChunkAudit, ResponseAudit, StudentResponse
from omniopd_verl.config import OmniOPDConfig
from omniopd_verl.core import check_anchors, chunk_pi_bar, dirichlet_posterior_mean, soft_acceptance
from omniopd_verl.core.seeds import stable_seed
from omniopd_verl.errors import GuardError, OmniOPDError
from omniopd_verl.protocols import TeacherRequest, TeacherResult
from omniopd_verl.teachers.accounting import METRIC_KEYS

# Teacher counters, reported per step as deltas of the backend's cumulative metrics.
TEACHER_COUNTERS = METRIC_KEYS


class TeacherFailureError(OmniOPDError, RuntimeError):
    """The teacher gave no usable samples for an anchor after all retries and on_failure='error'."""


@dataclass
class _Plan:
    """One response's anchors, the requests for them and the student's chunk texts."""

    response: StudentResponse
    anchors: list[int]
    requests: list[TeacherRequest]
    student_texts: list[str]
    results: list[TeacherResult] = field(default_factory=list)
    teacher_texts: list[list[str] | None] = field(default_factory=list)  # trimmed; None = dropped


class _SimilarityBatcher:
    """Serialises calls to a (synchronous) similarity plugin and coalesces what waits.

    Each call gets the de-duplicated union of the pairs submitted since the previous call started;
    the plugin runs in a worker thread so the event loop (teacher I/O) keeps going meanwhile.
    """

    def __init__(self, similarity):
        self.similarity = similarity
        self._pending: list[tuple[list[tuple[str, str]], asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self.calls = 0
        self.pairs = 0
        self.unique_pairs = 0
        self.seconds = 0.0

    async def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        if not pairs:
            return []
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._worker is None or self._worker.done():
            # engines may call asyncio.run once per step: forget waiters of a loop that was torn down
            self._pending = [(p, f) for p, f in self._pending if f.get_loop() is loop and not f.done()]
            self._pending.append((pairs, future))
            self._worker = asyncio.create_task(self._drain())
        else:
            self._pending.append((pairs, future))
        return await future

    async def _drain(self) -> None:
        while self._pending:
            taken, self._pending = self._pending, []
            unique: dict[tuple[str, str], int] = {}
            for pairs, _ in taken:
                for pair in pairs:
                    unique.setdefault(pair, len(unique))
            ordered = list(unique)
            t0 = time.perf_counter()
            try:
                scores = await asyncio.to_thread(self.similarity.score, ordered)
                if len(scores) != len(ordered):
                    raise GuardError(
                        f"similarity {getattr(self.similarity, 'name', self.similarity)!r} returned "
                        f"{len(scores)} scores for {len(ordered)} pairs"
                    )
            except BaseException as exc:  # every waiter learns why, then the worker stops
                for _, future in taken:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            self.seconds += time.perf_counter() - t0
            self.calls += 1
            self.pairs += sum(len(p) for p, _ in taken)
            self.unique_pairs += len(ordered)
            for pairs, future in taken:
                if not future.done():
                    future.set_result([float(scores[unique[pair]]) for pair in pairs])


class _StepStats:
    """What metrics() reports, accumulated since reset_metrics()."""

    def __init__(self) -> None:
        self.responses = 0
        self.rows_without_audit = 0
        self.response_tokens = 0
        self.audited_tokens = 0
        self.chunks = 0
        self.anchors_dropped = 0
        self.pi_hat: list[float] = []
        self.k_sem_frac: list[float] = []
        self.pi_bar: list[float] = []
        self.k_sem_inside = 0
        self.seconds = 0.0


class Auditor:
    """Audits finished student responses against a text-only teacher. See the module docstring."""

    def __init__(self, config: OmniOPDConfig, tokenizer, *, teacher=None, similarity=None, scheduler=None):
        self.config = config
        self.tokenizer = tokenizer
        # built through the registry like any user's teacher: the plugin wrapped in the teacher library
        self.teacher = teacher if teacher is not None else registry.create_teacher(config.teacher)
        self.similarity = (
            similarity
            if similarity is not None
            else registry.create("similarity", config.similarity, **config.similarity_options)
        )
        self.scheduler = (
            scheduler
            if scheduler is not None
            else registry.create("schedulers", config.scheduler, **config.scheduler_options)
        )
        self._batcher = _SimilarityBatcher(self.similarity)
        self.reset_metrics()

    # ---------------------------------------------------------------- public API

    async def audit(self, responses: Sequence[StudentResponse]) -> list[ResponseAudit]:
        """Audit a batch: all teacher calls concurrently, then one de-duplicated similarity call."""
        t0 = time.perf_counter()
        plans = [self._plan(r) for r in responses]
        try:
            await _gather_or_cancel([self._sample(p) for p in plans])
        except OmniOPDError:  # the run stops: answers already in flight still land, counted and cached
            drain = getattr(self.teacher, "drain", None)
            if drain is not None:
                await drain()
            raise
        pairs = [pair for p in plans for pair in self._pairs(p)]
        scores = await self._batcher.score(pairs)
        audits, offset = [], 0
        for p in plans:
            n_pairs = len(self._pairs(p))
            audits.append(self._finish(p, scores[offset : offset + n_pairs]))
            offset += n_pairs
        self._stats.seconds += time.perf_counter() - t0
        return audits

    async def audit_one(self, response: StudentResponse) -> ResponseAudit:
        """Audit one finished response now (streaming); concurrent calls share similarity batches."""
        t0 = time.perf_counter()
        plan = self._plan(response)
        await self._sample(plan)
        audit = self._finish(plan, await self._batcher.score(self._pairs(plan)))
        self._stats.seconds += time.perf_counter() - t0
        return audit

    def reset_metrics(self) -> None:
        """Start a new step: metrics() reports what happened from here on."""
        self._stats = _StepStats()
        self._teacher_base = self._teacher_metrics()
        self._sim_base = (self._batcher.calls, self._batcher.pairs, self._batcher.unique_pairs, self._batcher.seconds)

    def metrics(self) -> dict[str, float]:
        """ALGORITHM.md "Metrics every run should log" for the audit, since the last reset_metrics()."""
        s = self._stats
        out: dict[str, float] = {
            "audit/rows": float(s.responses),
            "audit/chunks": float(s.chunks),
            "audit/chunks_per_response": s.chunks / s.responses if s.responses else 0.0,
            "audit/rows_without_audit": float(s.rows_without_audit),
            "audit/token_fraction": s.audited_tokens / s.response_tokens if s.response_tokens else 0.0,
            "audit/anchors_dropped": float(s.anchors_dropped),
            "audit/k_sem_inside_frac": s.k_sem_inside / s.chunks if s.chunks else 0.0,
            "audit/seconds": s.seconds,  # summed over audit()/audit_one() calls (concurrent calls overlap)
        }
        for name, values in (("pi_hat", s.pi_hat), ("k_sem_frac", s.k_sem_frac), ("pi_bar", s.pi_bar)):
            if values:
                out[f"audit/{name}_mean"] = sum(values) / len(values)
                out[f"audit/{name}_min"] = min(values)
                out[f"audit/{name}_max"] = max(values)
        calls, pairs, unique, seconds = self._sim_base
        out["similarity/calls"] = float(self._batcher.calls - calls)
        out["similarity/pairs"] = float(self._batcher.pairs - pairs)
        out["similarity/unique_pairs"] = float(self._batcher.unique_pairs - unique)
        out["similarity/seconds"] = self._batcher.seconds - seconds
        teacher = self._teacher_metrics()
        for key, value in teacher.items():
            # counters become per-step deltas; anything else (gauges, rates) is passed through as is
            out[key] = value - self._teacher_base.get(key, 0.0) if key in TEACHER_COUNTERS else value
        return out

    async def aclose(self) -> None:
        await self.teacher.aclose()

    # ---------------------------------------------------------------- pipeline

    def _teacher_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in (self.teacher.metrics() or {}).items()}

    def _plan(self, r: StudentResponse) -> _Plan:
        cfg = self.config
        T = len(r.response_ids)
        if r.logprobs_T.dim() != 1 or r.logprobs_T.shape[0] != T:
            raise GuardError(f"response {r.uid!r}: log-prob length {tuple(r.logprobs_T.shape)} != response length {T}")
        if self.scheduler.needs_entropy and r.entropy_T is None:
            raise GuardError(
                f"response {r.uid!r}: scheduler {cfg.scheduler!r} needs per-token entropies, but none were given"
            )
        if r.entropy_T is not None and (r.entropy_T.dim() != 1 or r.entropy_T.shape[0] != T):
            raise GuardError(f"response {r.uid!r}: entropy length {tuple(r.entropy_T.shape)} != response length {T}")
        # None = uid: the local engine's and the audit CLI's seeds are the same as before seed_key existed
        key = r.uid if r.seed_key is None else r.seed_key
        anchors = self.scheduler.select(
            r.entropy_T, T, cfg.chunks, cfg.chunk_len, seed=stable_seed(cfg.seed, key, "scheduler")
        )
        anchors = list(anchors)
        # a scheduler may declare that it ignores M (the dense `all` baseline); the rest are held to it
        capped = getattr(self.scheduler, "respects_chunks", True)
        check_anchors(anchors, T, cfg.chunk_len, cfg.chunks if capped else None)
        text = ResponseText(self.tokenizer, r.response_ids)
        messages = tuple(dict(m) for m in r.prompt_messages) if r.prompt_messages is not None else None
        requests = [
            TeacherRequest(
                request_id=f"{r.uid}:{t}",
                prompt_text=r.prompt_text,
                response_prefix=text.prefix(t),
                n=cfg.samples,
                student_tokens=cfg.chunk_len,
                seed=stable_seed(cfg.seed, key, t),
                prompt_messages=messages,
                teacher_context=r.teacher_context,
            )
            for t in anchors
        ]
        student_texts = [text.span(t, t + cfg.chunk_len) for t in anchors]
        return _Plan(response=r, anchors=anchors, requests=requests, student_texts=student_texts)

    async def _sample(self, plan: _Plan) -> None:
        if not plan.requests:
            return
        results = list(await self.teacher.sample(plan.requests))
        if len(results) != len(plan.requests):
            raise GuardError(
                f"teacher {self.config.teacher.name!r} returned {len(results)} results for {len(plan.requests)} requests"
            )
        plan.results = results
        n = self.config.samples
        for req, res in zip(plan.requests, results, strict=True):
            if res.request_id != req.request_id:
                raise GuardError(f"teacher answered {res.request_id!r} in the place of {req.request_id!r}")
            if res.texts is None or len(res.texts) != n:
                why = res.error or f"{0 if res.texts is None else len(res.texts)} texts instead of {n}"
                if self.config.teacher.on_failure == "error":
                    raise TeacherFailureError(
                        f"teacher {self.config.teacher.name!r} failed on {req.request_id} after retries: {why} "
                        "(set teacher.on_failure='drop' to drop such anchors and count them instead)"
                    )
                plan.teacher_texts.append(None)
                continue
            plan.teacher_texts.append(
                [trim_to_student_tokens(self.tokenizer, t, self.config.chunk_len) for t in res.texts]
            )

    @staticmethod
    def _pairs(plan: _Plan) -> list[tuple[str, str]]:
        return [
            (student, teacher)
            for student, texts in zip(plan.student_texts, plan.teacher_texts, strict=True)
            if texts is not None
            for teacher in texts
        ]

    def _finish(self, plan: _Plan, scores: list[float]) -> ResponseAudit:
        cfg, r = self.config, plan.response
        N, C = cfg.samples, cfg.chunk_len
        kept = [k for k, texts in enumerate(plan.teacher_texts) if texts is not None]
        dropped = len(plan.anchors) - len(kept)
        audit = ResponseAudit(
            uid=r.uid, response_len=len(r.response_ids), anchors_dropped=dropped, entropy_source=r.entropy_source
        )
        audit.teacher = _teacher_block(plan.results)
        if kept:
            sims_MN = torch.tensor(scores, dtype=torch.float64).view(len(kept), N)
            k_sem_M = soft_acceptance(sims_MN, samples=N)
            starts = [plan.anchors[k] for k in kept]
            chunk_lp_MC = torch.stack([r.logprobs_T[t : t + C].detach().double().cpu() for t in starts])
            pi_bar_M = chunk_pi_bar(chunk_lp_MC)
            pi_hat_M = dirichlet_posterior_mean(k_sem_M, pi_bar_M, N, cfg.alpha)
            for m, k in enumerate(kept):
                t = plan.anchors[k]
                audit.chunks.append(
                    ChunkAudit(
                        start=t,
                        end=t + C,
                        entropy=float(r.entropy_T[t]) if r.entropy_T is not None else None,
                        student_text=plan.student_texts[k],
                        teacher_texts=list(plan.teacher_texts[k]),
                        similarities=[float(x) for x in sims_MN[m].tolist()],
                        k_sem=float(k_sem_M[m]),
                        pi_bar=float(pi_bar_M[m]),
                        pi_hat=float(pi_hat_M[m]),
                    )
                )
        self._record(audit)
        return audit

    def _record(self, audit: ResponseAudit) -> None:
        s, N = self._stats, self.config.samples
        s.responses += 1
        s.response_tokens += audit.response_len
        s.anchors_dropped += audit.anchors_dropped
        if not audit.chunks:
            s.rows_without_audit += 1
        for c in audit.chunks:
            s.chunks += 1
            s.audited_tokens += c.end - c.start
            s.pi_hat.append(c.pi_hat)
            s.k_sem_frac.append(c.k_sem / N)
            s.pi_bar.append(c.pi_bar)
            if 0.05 * N < c.k_sem < 0.95 * N:
                s.k_sem_inside += 1


def _teacher_block(results: Sequence[TeacherResult]) -> dict[str, float]:
    """Per-response teacher accounting, from the results of its anchors."""
    return {
        "requests": float(len(results)),  # one per anchor; HTTP calls are the meter's teacher/calls
        "retries": float(sum(r.retries for r in results)),
        "failures": float(sum(r.texts is None for r in results)),
        "cache_hits": float(sum(bool(r.cached) for r in results)),
        "prompt_tokens": float(sum(r.prompt_tokens for r in results)),
        "completion_tokens": float(sum(r.completion_tokens for r in results)),
        "cost_usd": float(sum(r.cost_usd for r in results)),
        "seconds": float(sum(r.seconds for r in results)),
    }


async def _gather_or_cancel(coros) -> list:
    """asyncio.gather that cancels the siblings when one fails (Python 3.10 has no TaskGroup)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
