"""HTTP teachers (openai_completions, litellm chat, litellm Anthropic) against the real local server.

Real litellm, a real socket on 127.0.0.1, injected faults. Every fault must end with all N samples or
the configured failure outcome, counted; reruns come from the cache; the key never leaks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

import pytest

from omniopd_verl.config import TeacherConfig
from omniopd_verl.protocols import TeacherRequest
from omniopd_verl.serving.openai_compat import GenerationCall
from omniopd_verl.teachers.accounting import METRIC_KEYS, TeacherBudgetExceeded
from omniopd_verl.teachers.reliability import TeacherAuthError, parse_retry_after
from omniopd_verl.testing import Fault, ScriptedGenerator, key_digest, serve_fault_server

KEY = "sk-omniopd-test-DO-NOT-LEAK-4f9a2c"
ENV = "OMNIOPD_TEST_TEACHER_KEY"
N = 3

# name -> (endpoint path, TeacherConfig kwargs given the server)
FORMATS = {
    "completions": ("/v1/completions", lambda s: dict(name="openai_completions", model="tiny", api_base=s.url)),
    "chat": ("/v1/chat/completions", lambda s: dict(name="litellm", model="openai/tiny", api_base=s.url)),
    "anthropic": (
        "/v1/messages",
        lambda s: dict(name="litellm", model="anthropic/claude-haiku-4-5", api_base=s.root_url),
    ),
}


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(ENV, KEY)


def make_teacher(server, fmt, tmp_path=None, **overrides):
    from omniopd_verl import registry

    options = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, **overrides.pop("options", {})}
    kwargs = dict(FORMATS[fmt][1](server), api_key_env=ENV, max_retries=3, timeout_s=10.0, options=options)
    if tmp_path is not None:
        kwargs["cache_path"] = str(tmp_path / "cache.sqlite")
    kwargs.update(overrides)
    config = TeacherConfig(**kwargs)
    return registry.create_teacher(config)


def request(i=0, *, n=N, prefix="The answer is ", context=None, messages=True):
    return TeacherRequest(
        request_id=f"uid{i}:{5 + i}",
        prompt_text=f"<|im_start|>user\nQuestion {i}?<|im_end|>\n<|im_start|>assistant\n",
        response_prefix=prefix,
        n=n,
        student_tokens=4,
        seed=1000 + i,
        prompt_messages=({"role": "user", "content": f"Question {i}?"},) if messages else None,
        teacher_context=context,
    )


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_happy_path_sends_the_prefix_and_returns_n_samples(fmt):
    with serve_fault_server(api_key=KEY) as server:
        teacher = make_teacher(server, fmt)
        reqs = [request(0), request(1, context="Reference: 42")]
        results = run(teacher.sample(reqs))
        assert [r.request_id for r in results] == [r.request_id for r in reqs]
        assert all(r.texts is not None and len(r.texts) == N and r.error is None for r in results)
        metrics = teacher.metrics()
        assert set(METRIC_KEYS) <= set(metrics)
        calls = 2 if fmt != "anthropic" else 2 * N  # Anthropic has no `n`: one call per sample
        assert metrics["teacher/calls"] == calls == server.calls(FORMATS[fmt][0]), (metrics, server.requests)
        assert metrics["teacher/retries"] == metrics["teacher/failures"] == 0
        assert metrics["teacher/completion_tokens"] == sum(r.completion_tokens for r in results) > 0
        bodies = [q.body for q in server.requests]
        teacher_max_tokens = math.ceil(4 * 1.25)  # student-token-equivalents x the default max_tokens_factor
        if fmt == "completions":
            prompts = {b["seed"]: b["prompt"] for b in bodies}
            assert prompts[1000] == reqs[0].prefix_text  # exact raw prefix
            assert prompts[1001] == "Reference: 42\n\n" + reqs[1].prefix_text  # documented context block
            assert {b["n"] for b in bodies} == {N} and {b["seed"] for b in bodies} == {1000, 1001}
            assert {b["max_tokens"] for b in bodies} == {teacher_max_tokens}
            expected = ScriptedGenerator().generate(
                GenerationCall("completions", reqs[0].prefix_text, None, N, teacher_max_tokens, 1.0, 1.0, 1000, "tiny")
            )
            assert results[0].texts == expected
        elif fmt == "chat":  # instruct continuation: the partial answer is shown and continued verbatim
            last = bodies[0]["messages"][-1]
            assert last["role"] == "user" and "Continue it verbatim" in last["content"]
            assert "<partial_answer>\nThe answer is \n</partial_answer>" in last["content"]
            with_context = next(b for b in bodies if b["messages"][0]["role"] == "system")
            assert "Reference: 42" in with_context["messages"][0]["content"]
        else:  # Anthropic prefill: trailing assistant message, whitespace-free end; context as system
            for body in bodies:
                last = body["messages"][-1]
                assert last["role"] == "assistant"
                assert last["content"][0]["text"] == "The answer is"  # Anthropic rejects trailing spaces
            # the scripted texts start with " w..": the cut space is not repeated in the continuation
            assert all(t.startswith("w") for r in results for t in r.texts)
            assert any("Reference: 42" in b.get("system", [{}])[0].get("text", "") for b in bodies if b.get("system"))
            assert all(q.key_sha256 == key_digest(KEY) for q in server.requests)
            assert all(b["temperature"] == 1.0 and "top_p" not in b and "seed" not in b for b in bodies), bodies
        if fmt != "anthropic":
            assert all(q.key_sha256 == key_digest(KEY) for q in server.requests)


FAULTS = {
    "rate_limit": Fault("rate_limit", retry_after=0.05),
    "server_error": Fault("server_error"),
    "hang": Fault("hang", hang_s=3.0),
    "malformed": Fault("malformed"),
    "bad_schema": Fault("bad_schema"),
    "short": Fault("short"),
    "disconnect": Fault("disconnect"),
}


# An Anthropic message carries one sample, so "fewer choices than asked" has no Anthropic form:
# that pair is not generated (rather than generated and skipped).
FORMAT_FAULTS = [(fmt, fault) for fmt in FORMATS for fault in FAULTS if not (fmt == "anthropic" and fault == "short")]


@pytest.mark.parametrize(("fmt", "fault"), FORMAT_FAULTS)
def test_every_fault_is_retried_until_all_n_samples_arrive(fmt, fault):
    with serve_fault_server(faults=[FAULTS[fault]], api_key=KEY) as server:
        teacher = make_teacher(server, fmt, timeout_s=1.0 if fault == "hang" else 10.0)
        results = run(teacher.sample([request(0), request(1)]))
        assert all(r.texts is not None and len(r.texts) == N for r in results), [r.error for r in results]
        assert all(isinstance(t, str) for r in results for t in r.texts)
        metrics = teacher.metrics()
        assert metrics["teacher/retries"] == 1 and sum(r.retries for r in results) == 1
        assert metrics["teacher/failures"] == 0
        assert server.faults_left() == 0
        assert metrics["teacher/calls"] == server.calls(FORMATS[fmt][0])


@pytest.mark.parametrize("fmt", ["completions", "anthropic"])
@pytest.mark.parametrize("on_failure", ["error", "drop"])
def test_persistent_faults_end_in_a_counted_failure_and_nothing_else_is_lost(fmt, on_failure):
    faults = [Fault("server_error", times=100, match="Question 1?")]
    with serve_fault_server(faults=faults, api_key=KEY) as server:
        teacher = make_teacher(server, fmt, max_retries=2, on_failure=on_failure)
        results = run(teacher.sample([request(0), request(1), request(2)]))
        ok, failed, ok2 = results
        assert ok.texts is not None and ok2.texts is not None and len(ok.texts) == len(ok2.texts) == N
        assert failed.texts is None and "InternalServerError" in failed.error and "after retries" in failed.error
        per_unit = 1 if fmt == "completions" else N
        assert failed.retries == 2 * per_unit
        metrics = teacher.metrics()
        assert metrics["teacher/failures"] == 1 and metrics["teacher/retries"] == 2 * per_unit
        assert server.calls() == metrics["teacher/calls"] == 2 * per_unit + 3 * per_unit


def test_client_errors_are_not_retried_and_a_bad_key_stops(monkeypatch):
    with serve_fault_server(api_key=KEY) as server:
        monkeypatch.setenv(ENV, "sk-wrong-key")
        teacher = make_teacher(server, "completions")
        with pytest.raises(TeacherAuthError, match="HTTP 401") as info:
            run(teacher.sample([request(0)]))
        assert "sk-wrong-key" not in str(info.value)
        assert teacher.metrics()["teacher/retries"] == 0
        monkeypatch.setenv(ENV, KEY)
        teacher = make_teacher(server, "completions")
        bad = TeacherRequest("u:1", "", "", n=N, student_tokens=4, seed=0)  # empty prompt list is fine; n=0 is not
        results = run(teacher.sample([bad]))
        assert results[0].texts is not None
    monkeypatch.delenv(ENV)
    with pytest.raises(Exception, match=ENV):
        make_teacher(server, "completions")


@pytest.mark.parametrize("fmt", ["completions", "anthropic"])
def test_retry_after_is_honoured(fmt):
    wait = 1.0
    with serve_fault_server(faults=[Fault("rate_limit", retry_after=wait)], api_key=KEY) as server:
        teacher = make_teacher(server, fmt, options={"backoff_base_s": 0.01, "backoff_max_s": 0.01})
        results = run(teacher.sample([request(0, n=1)]))
        assert results[0].texts is not None
        first, second = server.requests[0], server.requests[1]
        assert first.status == 429 and second.status == 200
        gap = second.time - first.time
        assert wait <= gap < wait + 0.5, gap  # not the 0.01 s backoff


def test_parse_retry_after_seconds_and_http_dates():
    import email.utils

    assert parse_retry_after("2") == 2.0 and parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= parse_retry_after(date) <= 31


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_rerun_is_served_from_the_cache_and_the_key_never_leaks(fmt, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    faults = [Fault("rate_limit", retry_after=0.01), Fault("server_error", times=100, match="Question 2?")]
    reqs = [request(0), request(1, context="secret reference"), request(2)]
    with serve_fault_server(faults=faults, api_key=KEY) as server:
        teacher = make_teacher(server, fmt, tmp_path, max_retries=1, on_failure="drop")
        first = run(teacher.sample(reqs))
        run(teacher.aclose())
        path = FORMATS[fmt][0]  # teacher calls only (building a cached teacher also asks GET /models who it is)
        calls_first = server.calls(path)
        assert first[2].texts is None and first[0].texts and first[1].texts

        again = make_teacher(server, fmt, tmp_path, max_retries=1)  # a fresh process would do the same
        second = run(again.sample(reqs[:2]))
        assert server.calls(path) == calls_first  # zero teacher calls the second time
        assert [r.texts for r in second] == [r.texts for r in first[:2]]
        assert all(r.cached for r in second) and again.metrics()["teacher/cache_hits"] == 2
        assert again.metrics()["teacher/calls"] == 0
        # the context is part of the key: the same request without it is a miss
        run(again.sample([request(1)]))
        assert server.calls(path) > calls_first
        run(again.aclose())
        assert any(q.key_sha256 == key_digest(KEY) for q in server.requests)  # the key was sent...
    out, err = capsys.readouterr()
    blobs = {
        "logs": caplog.text,
        "stdout": out,
        "stderr": err,
        "results": repr(first) + repr(second),
        "metrics": repr(teacher.metrics()),
    }
    for path in tmp_path.iterdir():  # the SQLite file and its WAL/SHM side files
        blobs[path.name] = path.read_bytes().decode("latin-1")
    for where, blob in blobs.items():
        assert KEY not in blob, f"API key leaked into {where}"  # ...and appears nowhere else
    assert "attempt 1 failed" in caplog.text  # the logs were captured (retries are logged)


def test_budget_stops_with_a_clear_error(tmp_path):
    prices = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.002}

    def worst_case(i):  # one token per prompt byte, N samples of ceil(4 x 1.25) = 5 tokens, at the prices
        return 0.001 * len((request(i).prompt_text + request(i).response_prefix).encode()) + 0.002 * N * 5

    with serve_fault_server(api_key=KEY) as server:
        teacher = make_teacher(server, "completions", tmp_path, max_cost_usd=0.5, max_concurrency=1, options=prices)
        with pytest.raises(TeacherBudgetExceeded, match=r"max_cost_usd=\$0.5") as info:
            run(teacher.sample([request(i) for i in range(20)]))
        assert "raise the budget and rerun" in str(info.value)
        metrics = teacher.metrics()
        paid = int(metrics["teacher/calls"])
        assert 0 < paid < 20 and metrics["teacher/cost_usd"] <= 0.5  # never over the budget
        expected = 0.001 * metrics["teacher/prompt_tokens"] + 0.002 * metrics["teacher/completion_tokens"]
        assert metrics["teacher/cost_usd"] == pytest.approx(expected)
        # stopped by the first call (in order, one at a time) whose worst case did not fit in what was left
        left = 0.5 - metrics["teacher/cost_usd"]
        assert worst_case(paid) > left
        assert f"could cost up to ${worst_case(paid):.6f}" in str(info.value)
        # a rerun with a bigger budget pays only for what is missing
        more = make_teacher(server, "completions", tmp_path, max_cost_usd=10.0, options=prices)
        results = run(more.sample([request(i) for i in range(20)]))
        assert all(r.texts for r in results) and more.metrics()["teacher/cache_hits"] == paid


def test_budget_needs_a_price():
    with serve_fault_server() as server, pytest.raises(Exception, match="input_cost_per_token"):
        make_teacher(server, "completions", max_cost_usd=1.0, api_key_env=None)


def test_litellm_price_table_is_used_for_known_models():
    with serve_fault_server(api_key=KEY) as server:
        teacher = make_teacher(server, "anthropic")
        results = run(teacher.sample([request(0, n=1)]))
        import litellm

        p, c = litellm.cost_per_token(
            model="anthropic/claude-haiku-4-5",
            prompt_tokens=results[0].prompt_tokens,
            completion_tokens=results[0].completion_tokens,
        )
        assert results[0].cost_usd == pytest.approx(p + c) and p + c > 0
        assert teacher.metrics()["teacher/cost_usd"] == pytest.approx(p + c)


def test_concurrency_is_bounded():
    with serve_fault_server(api_key=KEY, latency_s=0.3) as server:
        teacher = make_teacher(server, "completions", max_concurrency=2)
        start = time.monotonic()
        results = run(teacher.sample([request(i) for i in range(6)]))
        elapsed = time.monotonic() - start
        assert all(r.texts for r in results)
        # two at a time, counted by the server: never more, and the cap is used (not one after another). No
        # upper bound on the wall time: a loaded machine may delay the client (the old `< 6 x 0.3 s` failed so)
        assert server.max_in_flight == 2
        assert elapsed >= 3 * 0.3  # at least three waves of two
        arrivals = sorted(q.time for q in server.requests)
        assert all(b - a >= 0.25 for a, b in zip(arrivals, arrivals[2:], strict=False))


def short_window_teacher(server, window_s, **overrides):
    """A teacher whose in-process ledger counts its rate limits per `window_s` instead of 60 s (same code)."""
    from omniopd_verl import registry
    from omniopd_verl.teachers.ledger import InProcessLedger, LedgerCore, LedgerSettings

    options = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}
    config = TeacherConfig(
        **FORMATS["completions"][1](server),
        api_key_env=ENV,
        max_retries=3,
        timeout_s=10.0,
        options=options,
        **overrides,
    )
    ledger = InProcessLedger(LedgerCore(LedgerSettings.from_teacher_config(config, window_s=window_s)))
    return registry.create_teacher(config, ledger=ledger)


def test_requests_per_minute_limit_holds_in_every_window():
    """requests_per_minute is what any window may hold: no burst above it (a leaky bucket allows 2x)."""
    with serve_fault_server(api_key=KEY) as server:
        teacher = short_window_teacher(server, 1.0, requests_per_minute=3)  # 3 per 1 s window
        start = time.monotonic()
        results = run(teacher.sample([request(i, n=1) for i in range(8)]))
        elapsed = time.monotonic() - start
        assert all(r.texts for r in results)
        arrivals = sorted(q.time for q in server.requests)
        assert len(arrivals) == 8
        # the 4th request of any 4 consecutive ones arrives at least one window after the 1st
        assert all(b - a >= 0.95 for a, b in zip(arrivals, arrivals[3:], strict=False)), arrivals
        assert elapsed >= 1.9  # 8 requests = 3 windows: two full waits


def test_tokens_per_minute_limit_delays_the_excess():
    with serve_fault_server(api_key=KEY, latency_s=0.3) as server:
        # the ledger's estimate per call: prompt chars / 4 + n x teacher max tokens (settled to the real usage)
        estimate = len(request(0, n=1).prefix_text) / 4 + math.ceil(4 * 1.25)
        teacher = short_window_teacher(server, 1.0, tokens_per_minute=2 * estimate)  # two calls' estimate fit
        results = run(teacher.sample([request(i, n=1) for i in range(3)]))
        assert all(r.texts for r in results)
        arrivals = sorted(q.time for q in server.requests)
        # two go at once; the third only once a settlement (its real, smaller usage) or the window made room
        assert arrivals[1] - arrivals[0] < 0.2 and arrivals[2] - arrivals[0] >= 0.25, arrivals


def test_chat_teacher_options_are_validated():
    with serve_fault_server() as server, pytest.raises(Exception, match="continuation"):
        make_teacher(server, "chat", options={"continuation": "telepathy"})
    with serve_fault_server() as server, pytest.raises(Exception, match="unknown keys"):
        make_teacher(server, "completions", options={"temprature": 1})
    with serve_fault_server() as server, pytest.raises(Exception, match=r"backoff_base_s=-1 is invalid"):
        make_teacher(server, "completions", options={"backoff_base_s": -1})
