"""The Auditor against independently computed values: anchors, requests, k_sem, pi_bar, pi_hat, failures,
similarity batching, metrics.

The teacher here is a scripted backend implementing the real TeacherBackend protocol (deterministic
texts chosen by the test, failures on chosen anchors); the HTTP teacher is exercised in test_cli.py.
The similarity is the real `ned` plugin, checked against a naive Levenshtein written here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest
import torch
from omniopd_naive import naive_ned, naive_peak_anchors
from transformers import AutoTokenizer

from omniopd_verl.audit import Auditor, TeacherFailureError
from omniopd_verl.audit.types import StudentResponse
from omniopd_verl.config import OmniOPDConfig
from omniopd_verl.core.seeds import stable_seed
from omniopd_verl.errors import GuardError
from omniopd_verl.protocols import TeacherBackend, TeacherCapabilities, TeacherResult
from omniopd_verl.similarity.ned import NormalizedEditSimilarity

C, N, M, ALPHA = 6, 3, 3, 1.5


class ScriptedTeacher:
    """A TeacherBackend whose texts are a pure function of (request, sample index); fails on `fail_ids`."""

    name = "scripted"
    capabilities = TeacherCapabilities(supports_n=True, supports_prefill=False, supports_seed=True, raw_completion=True)

    def __init__(self, texts_for=None, fail_ids=(), wrong_count_ids=()):
        self.texts_for = texts_for or (lambda req, j: f" the teacher says {j} about {req.request_id}")
        self.fail_ids = set(fail_ids)
        self.wrong_count_ids = set(wrong_count_ids)
        self.calls: list[list] = []
        self._m = {"teacher/calls": 0.0, "teacher/failures": 0.0, "teacher/retries": 0.0}

    async def sample(self, requests):
        self.calls.append(list(requests))
        await asyncio.sleep(0)
        out = []
        for req in requests:
            self._m["teacher/calls"] += 1
            if req.request_id in self.fail_ids:
                self._m["teacher/failures"] += 1
                self._m["teacher/retries"] += 2
                out.append(TeacherResult(req.request_id, None, error="HTTP 500 after 2 retries", retries=2))
            elif req.request_id in self.wrong_count_ids:
                out.append(TeacherResult(req.request_id, [self.texts_for(req, 0)]))
            else:
                out.append(TeacherResult(req.request_id, [self.texts_for(req, j) for j in range(req.n)], cached=True))
        return out

    def metrics(self):
        return dict(self._m)

    async def aclose(self):
        pass


class CountingNED(NormalizedEditSimilarity):
    """The real `ned` plugin, recording every batch it is asked to score."""

    def __init__(self):
        super().__init__()
        self.batches: list[list[tuple[str, str]]] = []

    def score(self, pairs):
        self.batches.append(list(pairs))
        return super().score(pairs)


@pytest.fixture(scope="module")
def tok(smollm2_path):
    return AutoTokenizer.from_pretrained(smollm2_path)


def make_config(**over) -> OmniOPDConfig:
    base = dict(
        chunks=M,
        samples=N,
        chunk_len=C,
        alpha=ALPHA,
        similarity="ned",
        seed=7,
        teacher={"name": "openai_completions", "on_failure": "error"},
    )
    base.update(over)
    return OmniOPDConfig.from_dict(base)


def make_response(tok, uid: str, text: str, seed: int) -> StudentResponse:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(len(ids), generator=g, dtype=torch.float64) * 3
    h = torch.rand(len(ids), generator=g).round(decimals=1)  # coarse values: ties exercise "larger t first"
    return StudentResponse(
        uid=uid, prompt_text=f"<prompt {uid}>\n", response_ids=ids, logprobs_T=lp.float(), entropy_T=h
    )


TEXTS = [
    "First we add 3 and 4 to get 7, then we multiply by 2 to get 14, so the answer is 14.",
    "Natalia sold 48 clips in April and half as many in May, which is 24, for 72 in total.",
    "This response is a bit shorter.",  # 7 tokens, shorter than 2C: one chunk
]


def test_audit_matches_independent_formulas(tok):
    responses = [make_response(tok, f"r{i}", t, i) for i, t in enumerate(TEXTS)]
    responses.append(make_response(tok, "dup", TEXTS[0], 0))  # same chunks as r0: duplicate pairs
    long_teacher = lambda req, j: f" alt{j} " + "and so on " * 20  # noqa: E731 - trimmed to C tokens
    teacher, sim = ScriptedTeacher(long_teacher), CountingNED()
    auditor = Auditor(make_config(), tok, teacher=teacher, similarity=sim)
    audits = asyncio.run(auditor.audit(responses))
    assert [a.uid for a in audits] == ["r0", "r1", "r2", "dup"]
    assert len(teacher.calls) == sum(1 for a in audits if a.chunks)  # one call per audited response
    for r, a, call in zip(responses, audits, [c for c in teacher.calls], strict=True):
        T = len(r.response_ids)
        anchors = naive_peak_anchors(r.entropy_T.tolist(), T, M, C)
        assert [c.start for c in a.chunks] == anchors and all(c.end == c.start + C for c in a.chunks)
        assert a.response_len == T and a.anchors_dropped == 0
        # requests: ascending anchors, the prefix (never the chunk), N samples of C tokens, stable seeds
        assert [q.request_id for q in call] == [f"{r.uid}:{t}" for t in anchors]
        for q, t in zip(call, anchors, strict=True):
            assert q.prompt_text == r.prompt_text
            assert q.response_prefix == tok.decode(r.response_ids[:t])
            assert q.prefix_text == r.prompt_text + tok.decode(r.response_ids[:t])
            assert (q.n, q.student_tokens) == (N, C)
            assert q.seed == stable_seed(7, r.uid, t) and 0 <= q.seed < 2**31
        for c in a.chunks:
            assert c.student_text == tok.decode(r.response_ids[c.start : c.end])
            assert c.entropy == pytest.approx(float(r.entropy_T[c.start]))
            assert len(c.teacher_texts) == N
            for j, text in enumerate(c.teacher_texts):
                full = long_teacher(None, j)
                assert full.startswith(text) and len(tok(text, add_special_tokens=False)["input_ids"]) == C
            sims = [naive_ned(c.student_text, t) for t in c.teacher_texts]
            assert c.similarities == pytest.approx(sims, abs=1e-12)
            assert c.k_sem == pytest.approx(sum(sims), abs=1e-12)
            lps = r.logprobs_T[c.start : c.end].tolist()
            prior = math.exp(sum(lps) / len(lps))
            assert c.pi_bar == pytest.approx(prior, rel=1e-12)
            assert c.pi_hat == pytest.approx((sum(sims) + ALPHA * prior) / (N + ALPHA), rel=1e-12)
    assert len(audits[2].chunks) == 1
    # one similarity call for the whole batch, every pair unique, covering all pairs
    assert len(sim.batches) == 1
    batch = sim.batches[0]
    assert len(batch) == len(set(batch))
    assert set(batch) == {(c.student_text, t) for a in audits for c in a.chunks for t in c.teacher_texts}
    assert len(batch) < sum(len(c.teacher_texts) for a in audits for c in a.chunks)  # duplicates removed


def test_metrics_match_the_audits(tok):
    responses = [make_response(tok, f"r{i}", t, i) for i, t in enumerate(TEXTS)]
    responses.append(make_response(tok, "tiny", "Hi", 9))  # shorter than C: no audit
    auditor = Auditor(make_config(), tok, teacher=ScriptedTeacher(), similarity=CountingNED())
    audits = asyncio.run(auditor.audit(responses))
    m = auditor.metrics()
    chunks = [c for a in audits for c in a.chunks]
    assert m["audit/rows"] == 4 and m["audit/rows_without_audit"] == 1
    assert m["audit/chunks_per_response"] == pytest.approx(len(chunks) / 4)
    total = sum(len(r.response_ids) for r in responses)
    assert m["audit/token_fraction"] == pytest.approx(len(chunks) * C / total)
    assert m["audit/pi_hat_mean"] == pytest.approx(sum(c.pi_hat for c in chunks) / len(chunks))
    assert m["audit/pi_hat_min"] == min(c.pi_hat for c in chunks)
    assert m["audit/k_sem_frac_max"] == pytest.approx(max(c.k_sem for c in chunks) / N)
    assert m["audit/pi_bar_mean"] == pytest.approx(sum(c.pi_bar for c in chunks) / len(chunks))
    inside = sum(0.05 * N < c.k_sem < 0.95 * N for c in chunks)
    assert m["audit/k_sem_inside_frac"] == pytest.approx(inside / len(chunks))
    assert m["teacher/calls"] == len(chunks) and m["similarity/calls"] == 1
    auditor.reset_metrics()
    asyncio.run(auditor.audit(responses[:1]))
    m2 = auditor.metrics()
    assert m2["audit/rows"] == 1 and m2["teacher/calls"] == len(audits[0].chunks)  # per-step deltas


def test_teacher_failure_error_and_drop(tok):
    r = make_response(tok, "r0", TEXTS[0], 0)
    anchors = naive_peak_anchors(r.entropy_T.tolist(), len(r.response_ids), M, C)
    bad = f"r0:{anchors[1]}"
    with pytest.raises(TeacherFailureError, match=f"{bad} after retries: HTTP 500"):
        asyncio.run(
            Auditor(make_config(), tok, teacher=ScriptedTeacher(fail_ids=[bad]), similarity=CountingNED()).audit([r])
        )
    cfg = make_config(teacher={"name": "openai_completions", "on_failure": "drop"})
    good = asyncio.run(Auditor(cfg, tok, teacher=ScriptedTeacher(), similarity=CountingNED()).audit([r]))[0]
    auditor = Auditor(
        cfg,
        tok,
        teacher=ScriptedTeacher(fail_ids=[bad], wrong_count_ids=[f"r0:{anchors[2]}"]),
        similarity=CountingNED(),
    )
    a = asyncio.run(auditor.audit([r]))[0]
    # the failed anchor and the one with too few samples are dropped and counted, never scored as 0
    assert [c.start for c in a.chunks] == [anchors[0]]
    assert a.anchors_dropped == 2 and auditor.metrics()["audit/anchors_dropped"] == 2
    assert a.chunks[0] == good.chunks[0]
    assert a.teacher["failures"] == 1 and a.teacher["retries"] == 2 and a.teacher["requests"] == 3


def test_streaming_audit_one_equals_batch_audit(tok):
    responses = [make_response(tok, f"r{i}", t, i) for i, t in enumerate(TEXTS)]
    batch = asyncio.run(
        Auditor(make_config(), tok, teacher=ScriptedTeacher(), similarity=CountingNED()).audit(responses)
    )
    sim = CountingNED()
    auditor = Auditor(make_config(), tok, teacher=ScriptedTeacher(), similarity=sim)

    async def stream():
        return await asyncio.gather(*(auditor.audit_one(r) for r in responses))

    assert asyncio.run(stream()) == batch
    assert 1 <= len(sim.batches) <= len(responses)
    assert all(len(b) == len(set(b)) for b in sim.batches)


def test_guards(tok):
    r = make_response(tok, "r0", TEXTS[0], 0)
    auditor = Auditor(make_config(), tok, teacher=ScriptedTeacher(), similarity=CountingNED())
    with pytest.raises(GuardError, match="needs per-token entropies"):
        asyncio.run(auditor.audit_one(StudentResponse("x", "p", r.response_ids, r.logprobs_T, None)))
    with pytest.raises(GuardError, match="entropy length"):
        asyncio.run(auditor.audit_one(StudentResponse("x", "p", r.response_ids, r.logprobs_T, r.entropy_T[:-1])))
    with pytest.raises(GuardError, match="log-prob length"):
        asyncio.run(auditor.audit_one(StudentResponse("x", "p", r.response_ids, r.logprobs_T[:-1], r.entropy_T)))
    # a scheduler that needs no entropy runs without it; anchors follow the uniform baseline
    uni = Auditor(make_config(scheduler="uniform"), tok, teacher=ScriptedTeacher(), similarity=CountingNED())
    a = asyncio.run(uni.audit_one(StudentResponse("x", "p", r.response_ids, r.logprobs_T, None)))
    T = len(r.response_ids)
    assert [c.start for c in a.chunks] == [k * (T - C) // (M - 1) for k in range(M)]
    assert all(c.entropy is None for c in a.chunks)


def test_seed_key_replaces_uid_in_the_random_draws_only(tok):
    """seed_key (verl: a hash of the trajectory's tokens) keys the scheduler's and the teacher's seeds; the
    request ids and the audit keep the uid. Unset, the draws are keyed on the uid, as before it existed."""
    from omniopd_verl.core.scheduling import random_anchors

    r = make_response(tok, "r0", TEXTS[0], 0)
    T = len(r.response_ids)
    teacher = ScriptedTeacher()
    auditor = Auditor(make_config(scheduler="random"), tok, teacher=teacher, similarity=CountingNED())
    runs = [dataclasses.replace(r, uid=f"run{i}:0", seed_key="content") for i in range(2)]
    plain = dataclasses.replace(r, uid="run0:0")
    audits = [asyncio.run(auditor.audit_one(x)) for x in (*runs, plain)]
    for x, a, call in zip((*runs, plain), audits, teacher.calls, strict=True):
        key = x.seed_key or x.uid
        anchors = random_anchors(T, M, C, seed=stable_seed(7, key, "scheduler"))
        assert a.uid == x.uid and [c.start for c in a.chunks] == anchors
        assert [q.request_id for q in call] == [f"{x.uid}:{t}" for t in anchors]
        assert [q.seed for q in call] == [stable_seed(7, key, t) for t in anchors]
    # two uids, one content: the same anchors and seeds (a rerun asks what was asked); the uid alone differs
    assert [q.seed for q in teacher.calls[0]] == [q.seed for q in teacher.calls[1]]
    assert [q.seed for q in teacher.calls[0]] != [q.seed for q in teacher.calls[2]]


def test_stable_seed_is_deterministic_and_distinct():
    assert stable_seed(0, "a", 3) == stable_seed(0, "a", 3)
    seeds = {stable_seed(s, u, t) for s in range(3) for u in ("a", "b") for t in range(5)}
    assert len(seeds) == 30


def test_scripted_teacher_is_a_teacher_backend():
    assert isinstance(ScriptedTeacher(), TeacherBackend)


@pytest.mark.parametrize("on_failure", ["error", "drop"])
def test_http_teacher_failure_after_retries(tok, on_failure):
    """The real openai_completions teacher against the real HTTP server: every call for r1's prompt gets
    a 500; after the retries the anchor is an error or is dropped and counted, never scored."""
    from omniopd_verl.testing import Fault, ScriptedGenerator, serve_fault_server

    responses = [make_response(tok, "r0", TEXTS[0], 0), make_response(tok, "r1", TEXTS[1], 1)]
    with serve_fault_server(
        generator=ScriptedGenerator(words=4), faults=[Fault("server_error", times=1000, match="<prompt r1>")]
    ) as server:
        teacher = {
            "name": "openai_completions",
            "model": "local-teacher",
            "api_base": server.url,
            "max_retries": 1,
            "on_failure": on_failure,
            "options": {"backoff_base_s": 0.01},
        }
        auditor = Auditor(make_config(teacher=teacher), tok, similarity=CountingNED())

        async def go():
            try:
                return await auditor.audit(responses)
            finally:
                await auditor.aclose()

        if on_failure == "error":
            with pytest.raises(TeacherFailureError, match="failed on r1:"):
                asyncio.run(go())
            return
        a0, a1 = asyncio.run(go())
    expected = naive_peak_anchors(responses[0].entropy_T.tolist(), len(responses[0].response_ids), M, C)
    assert [c.start for c in a0.chunks] == expected and all(len(c.teacher_texts) == N for c in a0.chunks)
    n1 = len(naive_peak_anchors(responses[1].entropy_T.tolist(), len(responses[1].response_ids), M, C))
    assert a1.chunks == [] and a1.anchors_dropped == n1 and a1.teacher["failures"] == n1
    m = auditor.metrics()
    assert m["audit/anchors_dropped"] == n1 and m["teacher/failures"] == n1 and m["teacher/retries"] == n1
    assert m["audit/rows_without_audit"] == 1 and m["audit/chunks"] == len(expected)


class OverlappingScheduler:
    """A broken third-party scheduler: its anchors overlap. The Auditor must refuse them."""

    needs_entropy = False

    def select(self, entropy_T, response_len, chunks, chunk_len, *, seed):
        return [0, chunk_len - 1]


def test_scheduler_output_is_guarded_and_all_positions_ignores_m(tok):
    r = make_response(tok, "r0", TEXTS[0], 0)
    bad = Auditor(
        make_config(), tok, teacher=ScriptedTeacher(), similarity=CountingNED(), scheduler=OverlappingScheduler()
    )
    with pytest.raises(GuardError, match="overlaps"):
        asyncio.run(bad.audit_one(r))
    every = Auditor(make_config(scheduler="all"), tok, teacher=ScriptedTeacher(), similarity=CountingNED())
    a = asyncio.run(every.audit_one(r))
    T = len(r.response_ids)
    assert [c.start for c in a.chunks] == list(range(0, T - C + 1, C)) and len(a.chunks) > M


def test_on_failure_error_every_failed_trajectory_names_the_teacher_not_the_failure_rate_guard(tok):
    """With on_failure='error' the first failed request stops the run, naming the teacher and the cause.
    The failure-rate guard (>= 8 requests, > max_failure_rate failed) must not pre-empt it: in verl the 8
    failures of a step reach the run's ledger in one batch, and the guard's message, which names no
    teacher, used to win or lose against TeacherFailureError by timing (a flaky main_ppo test)."""
    from omniopd_verl.testing import Fault, ScriptedGenerator, serve_fault_server

    responses = [make_response(tok, f"r{i}", TEXTS[i % 2], i) for i in range(4)]  # 4 x M=3 anchors = 12 requests
    with serve_fault_server(generator=ScriptedGenerator(words=4), faults=[Fault("server_error", times=1000)]) as server:
        teacher = {
            "name": "openai_completions",
            "model": "local-teacher",
            "api_base": server.url,
            "max_retries": 0,
            "on_failure": "error",
        }
        auditor = Auditor(make_config(teacher=teacher), tok, similarity=CountingNED())

        async def go():
            try:
                return await asyncio.gather(*(auditor.audit_one(r) for r in responses), return_exceptions=True)
            finally:
                await auditor.aclose()

        outcomes = asyncio.run(go())
        failed = sum(r.path == "/v1/completions" for r in server.requests)
    assert failed >= 8  # enough for the guard to trip if it were on
    for outcome in outcomes:
        assert isinstance(outcome, TeacherFailureError), repr(outcome)
        assert "teacher 'openai_completions' failed on r" in str(outcome) and "500" in str(outcome)
