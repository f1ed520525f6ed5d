"""The teacher library around every HTTP teacher (issue 10 items 1, 3, 4), against the real fault server.

- An empty sample is malformed (retried) unless it ended with a stop; an empty sample that ended with a
  stop is the teacher's real answer, kept, and counted in teacher/empty_stop_samples.
- A budget stop with answers in flight: every answer the server served is counted (spend = what the
  server's usage prices to) and cached, so a rerun pays only for the rest.
- Canary keys in every provider key variable never appear in stdout, stderr, logs, stored errors,
  exceptions, metrics or the cache file, after successful and 401/403 runs, and a 401 names the
  variable the key came from (never "$None").
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3

import pytest

from omniopd_verl import registry
from omniopd_verl.audit.auditor import _gather_or_cancel
from omniopd_verl.config import TeacherConfig
from omniopd_verl.teachers import (
    RawAnswer,
    RawSample,
    TeacherAuthError,
    TeacherBudgetExceeded,
    TeacherCapabilities,
    TeacherRequest,
)
from omniopd_verl.teachers.cache import TeacherCache
from omniopd_verl.teachers.secrets import PROVIDER_KEY_VARS
from omniopd_verl.testing import Fault, key_digest, serve_fault_server

N = 3
CANARY = {var: f"sk-canary-{var.lower().replace('_', '')}-7Qx9" for var in PROVIDER_KEY_VARS}
CANARY["OMNIOPD_TEST_KEY"] = "sk-canary-configured-key-3Jd8"
FORMATS = {  # name -> (endpoint path, TeacherConfig kwargs given the server)
    "completions": ("/v1/completions", lambda s: dict(name="openai_completions", model="tiny", api_base=s.url)),
    "chat": ("/v1/chat/completions", lambda s: dict(name="litellm", model="openai/tiny", api_base=s.url)),
    "anthropic": (
        "/v1/messages",
        lambda s: dict(name="litellm", model="anthropic/claude-haiku-4-5", api_base=s.root_url),
    ),
}


@pytest.fixture(autouse=True)
def test_key(monkeypatch):
    monkeypatch.setenv("OMNIOPD_TEST_KEY", CANARY["OMNIOPD_TEST_KEY"])


def make(server, fmt, **kw):
    options = {"backoff_base_s": 0.01, "backoff_max_s": 0.02, **kw.pop("options", {})}
    kw.setdefault("api_key_env", "OMNIOPD_TEST_KEY")
    return registry.create_teacher(
        TeacherConfig(**{**FORMATS[fmt][1](server), "max_retries": 2, "timeout_s": 10.0, "options": options, **kw})
    )


def request(i, n=N):
    return TeacherRequest(
        f"u{i}:{i}",
        f"Question {i}? Answer:",
        " The answer is",
        n=n,
        student_tokens=4,
        seed=10 + i,
        prompt_messages=({"role": "user", "content": f"Question {i}?"},),
    )


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_empty_sample_without_a_stop_is_retried(fmt):
    with serve_fault_server(faults=[Fault("empty_length", sample=1 if fmt != "anthropic" else 0)]) as server:
        teacher = make(server, fmt)
        [result] = asyncio.run(teacher.sample([request(0)]))
        assert result.texts is not None and len(result.texts) == N and all(result.texts), result
        m = teacher.metrics()
        assert m["teacher/retries"] == 1 and result.retries == 1 and m["teacher/empty_stop_samples"] == 0
        assert server.faults_left() == 0
        assert m["teacher/calls"] == server.calls(FORMATS[fmt][0])  # the malformed answer was a (counted) call


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_empty_sample_with_a_stop_is_a_real_answer(fmt):
    with serve_fault_server(faults=[Fault("empty_stop", sample=2 if fmt != "anthropic" else 0)]) as server:
        teacher = make(server, fmt)
        [result] = asyncio.run(teacher.sample([request(0)]))
        assert result.texts is not None and len(result.texts) == N
        empty = [j for j, t in enumerate(result.texts) if t == ""]
        # kept in place, to be scored (Anthropic: N one-sample calls race, the fault hits whichever comes first)
        assert empty == [2] if fmt != "anthropic" else len(empty) == 1
        m = teacher.metrics()
        assert m["teacher/retries"] == 0 and m["teacher/empty_stop_samples"] == 1 and m["teacher/failures"] == 0


def test_empty_samples_reach_the_auditor_as_scored_text(tiny_model_path):
    """End to end: the Auditor scores an empty-stop sample (similarity of '' to the chunk), never a failure."""
    import torch
    from transformers import AutoTokenizer

    from omniopd_verl.audit import StudentResponse
    from omniopd_verl.audit.auditor import Auditor
    from omniopd_verl.config import OmniOPDConfig

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    ids = tok("one two three four five six seven eight nine ten", add_special_tokens=False)["input_ids"]
    response = StudentResponse("r0", "Count:", ids, torch.full((len(ids),), -1.0))
    with serve_fault_server(faults=[Fault("empty_stop", times=100)]) as server:
        cfg = OmniOPDConfig(
            chunks=1,
            samples=N,
            chunk_len=3,
            scheduler="uniform",
            similarity="ned",
            teacher=dict(name="openai_completions", model="tiny", api_base=server.url),
        )
        auditor = Auditor(cfg, tok)
        [audit] = asyncio.run(auditor.audit([response]))
        [chunk] = audit.chunks
        assert chunk.teacher_texts.count("") == 1 and chunk.similarities[chunk.teacher_texts.index("")] == 0.0
        assert auditor.metrics()["teacher/empty_stop_samples"] == 1 and audit.anchors_dropped == 0


PRICES = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.002}


def _served_cost(server) -> float:
    """What the server's own usage prices to, over every answer it served (status 200)."""
    total = 0.0
    for q in server.requests:
        if q.status == 200 and q.body is not None:
            # the scripted server's usage: words of the prompt, and `max_tokens` words per sample
            words = len(q.body["prompt"].split())
            total += (
                words * PRICES["input_cost_per_token"]
                + q.body["n"] * min(8, q.body["max_tokens"]) * PRICES["output_cost_per_token"]
            )
    return total


def test_budget_stop_counts_and_caches_every_answer_in_flight(tmp_path):
    cache = str(tmp_path / "cache.sqlite")
    # the 4th request's worst case (a 3000-byte context at $0.001/token) cannot fit in $1: the run stops there,
    # while requests 0-2 are in flight (0.4 s each); nothing after the stop is sent
    huge = dataclasses.replace(request(3), teacher_context="x" * 3000)
    requests = [request(0), request(1), request(2), huge] + [request(i) for i in range(4, 12)]
    with serve_fault_server(latency_s=0.4) as server:
        teacher = make(server, "completions", cache_path=cache, max_concurrency=4, max_cost_usd=1.0, options=PRICES)

        async def like_the_auditor():  # two responses at once; the Auditor cancels the sibling on the stop
            await _gather_or_cancel([teacher.sample(requests[:6]), teacher.sample(requests[6:])])

        with pytest.raises(TeacherBudgetExceeded, match=r"could cost up to \$3\.0[0-9]+ .* more than the \$1\.0+ left"):
            asyncio.run(like_the_auditor())
        served = [q for q in server.requests if q.path == "/v1/completions"]
        assert [q.status for q in served] == [200, 200, 200]  # the three in flight landed, nothing else was sent
        m = teacher.metrics()
        assert m["teacher/calls"] == 3
        assert m["teacher/cost_usd"] == pytest.approx(_served_cost(server))  # spend = what the server served
        assert TeacherCache(cache).count() == 3  # every answer received is cached
        # a rerun with room in the budget pays only for what was not served
        before = server.calls("/v1/completions")
        rerun = make(server, "completions", cache_path=cache, max_cost_usd=100.0, options=PRICES)
        results = asyncio.run(rerun.sample(requests))
        assert all(r.texts is not None for r in results)
        assert server.calls("/v1/completions") - before == len(requests) - 3
        assert rerun.metrics()["teacher/cache_hits"] == 3


@pytest.fixture
def canaries(monkeypatch):
    for var, value in CANARY.items():
        monkeypatch.setenv(var, value)
    return CANARY


# (format, api_key_env): which variable the key comes from; None = no variable named: a custom api_base
# (this server) then gets no key at all, never the provider's default variable (issue 22 §5)
KEY_CASES = [
    ("completions", "OMNIOPD_TEST_KEY"),
    ("chat", "OMNIOPD_TEST_KEY"),
    ("chat", None),
    ("anthropic", None),
    ("anthropic", "OMNIOPD_TEST_KEY"),
]


def _leaks(text: str) -> list[str]:
    return [var for var, value in CANARY.items() if value in text]


@pytest.mark.parametrize(("fmt", "env"), KEY_CASES)
def test_no_key_is_ever_printed_logged_or_stored(fmt, env, canaries, tmp_path, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    used = canaries[env] if env else None  # None: a keyless server, and no key may be sent to it
    cache = tmp_path / "cache.sqlite"
    texts = []
    # a successful run (the server wants exactly the key that the teacher should send), with retried faults
    with serve_fault_server(api_key=used, faults=[Fault("server_error"), Fault("empty_length")]) as server:
        teacher = make(server, fmt, api_key_env=env, cache_path=str(cache), on_failure="drop")
        results = asyncio.run(teacher.sample([request(0), request(1)]))
        assert all(r.texts is not None for r in results), [r.error for r in results]
        assert server.requests[-1].status == 200
        texts += [json.dumps(teacher.metrics()), *(r.error or "" for r in results)]
        if env is None:  # nothing of any provider variable went to this host
            texts += [json.dumps(q.headers) for q in server.requests]
            assert not {q.key_sha256 for q in server.requests} & {key_digest(v) for v in CANARY.values()}
        asyncio.run(teacher.aclose())
    # 401 and 403: the server refuses the key (and echoes it, as OpenAI does)
    for status in (401, 403):
        with serve_fault_server(api_key="sk-the-server-wants-another-key") as server:
            if status == 403:
                server.authorize = lambda path, headers: _forbidden(path, headers)
            teacher = make(server, fmt, api_key_env=env)
            with pytest.raises(TeacherAuthError) as info:
                asyncio.run(teacher.sample([request(0)]))
            message = str(info.value)
            assert f"HTTP {status}" in message and "$None" not in message
            assert (f"${env}" if env else "no API key was configured") in message  # names where the key came from
            texts += [message, json.dumps(teacher.metrics())]
    out = capfd.readouterr()
    texts += [out.out, out.err, caplog.text]
    with sqlite3.connect(cache) as db:
        texts += [json.dumps(row) for row in db.execute("SELECT * FROM teacher_cache")]
    texts.append(cache.read_bytes().decode("utf-8", "replace"))
    leaks = {var for text in texts for var in _leaks(text)}
    assert not leaks, leaks


def _forbidden(path, headers):
    from omniopd_verl.serving.openai_compat import Reply, error_body, sent_key

    message = f"Key {sent_key(headers)} is not allowed to use this model"
    return Reply(403, error_body(path == "/v1/messages", "permission_error", message))


def test_no_key_in_the_audit_cli_outputs_after_success_and_401(canaries, tmp_path, capfd):
    """`omniopd-verl audit` with the litellm teacher and the key from the provider's usual variable (named:
    a custom host gets no key otherwise): nothing of any canary in stdout, stderr, the JSONL, the HTML
    report or the cache."""
    from omniopd_verl.cli.main import main

    inp = tmp_path / "in.jsonl"
    inp.write_text(
        json.dumps({"id": "r0", "prompt": "Count to ten.", "response": " one two three four five six"}) + "\n"
    )
    out, report, cache = tmp_path / "out.jsonl", tmp_path / "report.html", tmp_path / "cache.sqlite"

    def audit(server):
        return main(
            ["audit", "--input", str(inp), "--output", str(out), "--report", str(report), "--cache", str(cache),
             "--student", "smollm2-135m-instruct", "--teacher", "litellm", "--teacher-model", "openai/tiny",
             "--teacher-api-base", server.url, "--teacher-api-key-env", "OPENAI_API_KEY", "--chunks", "1", "--samples", "2", "--chunk-len", "3",
             "--similarity", "ned", "--max-retries", "2", "--teacher-option", "backoff_base_s=0.01"]
        )  # fmt: skip

    with serve_fault_server(api_key=canaries["OPENAI_API_KEY"], faults=[Fault("server_error")]) as server:
        assert audit(server) == 0
    texts = [out.read_text(), report.read_text(), cache.read_bytes().decode("utf-8", "replace")]
    cache.unlink()
    with serve_fault_server(api_key="sk-the-server-wants-another-key") as server:
        assert audit(server) != 0
    captured = capfd.readouterr()
    assert "HTTP 401" in captured.err and "$OPENAI_API_KEY" in captured.err and "$None" not in captured.err
    texts += [captured.out, captured.err]
    leaks = {var for text in texts for var in _leaks(text)}
    assert not leaks, leaks


class _EmptyThenText:
    """A raw plugin (any backend looks like this to the library): the first answer has an empty sample
    ending with `finish`, the next answers are full."""

    capabilities = TeacherCapabilities(supports_n=True, raw_completion=True, batched=True, priced=False)

    def __init__(self, finish):
        self.finish, self.calls = finish, 0

    def sample_raw(self, requests):
        self.calls += 1
        empty = self.calls == 1
        return [
            RawAnswer([RawSample("" if empty and j == 0 else f" s{j}", self.finish if empty and j == 0 else "length")
                       for j in range(r.n)])
            for r in requests
        ]  # fmt: skip


@pytest.mark.parametrize(("finish", "retried"), [("length", True), (None, True), ("stop", False), ("eos", False)])
def test_the_empty_sample_rule_holds_for_any_plugin(finish, retried):
    from omniopd_verl.teachers.library import Teacher

    plugin = _EmptyThenText(finish)
    teacher = Teacher("empty", plugin, TeacherConfig(name="transformers", model="m", max_retries=1))
    [result] = asyncio.run(teacher.sample([request(0)]))
    m = teacher.metrics()
    if retried:
        assert result.texts == [" s0", " s1", " s2"] and m["teacher/retries"] == 1 and plugin.calls == 2
        assert m["teacher/empty_stop_samples"] == 0
    else:
        assert result.texts == ["", " s1", " s2"] and m["teacher/retries"] == 0 and plugin.calls == 1
        assert m["teacher/empty_stop_samples"] == 1


def test_a_teacher_failure_stop_still_caches_the_answers_in_flight(tmp_path, tiny_model_path):
    """on_failure='error': the Auditor stops the batch, but what the server already served is kept."""
    import torch
    from transformers import AutoTokenizer

    from omniopd_verl.audit import StudentResponse, TeacherFailureError
    from omniopd_verl.audit.auditor import Auditor
    from omniopd_verl.config import OmniOPDConfig

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    ids = tok("one two three four five six seven eight", add_special_tokens=False)["input_ids"]
    responses = [StudentResponse(f"r{i}", f"Count {i}:", ids, torch.full((len(ids),), -1.0)) for i in range(6)]
    cache = tmp_path / "cache.sqlite"
    with serve_fault_server(faults=[Fault("server_error", times=100, match="Count 0:")], latency_s=0.5) as server:
        cfg = OmniOPDConfig(
            chunks=1,
            samples=2,
            chunk_len=2,
            scheduler="uniform",
            similarity="ned",
            teacher=dict(
                name="openai_completions", model="tiny", api_base=server.url, max_retries=0, cache_path=str(cache)
            ),
        )
        auditor = Auditor(cfg, tok)
        with pytest.raises(TeacherFailureError, match="r0"):
            asyncio.run(auditor.audit(responses))
        served = sum(q.status == 200 for q in server.requests if q.path == "/v1/completions")
    assert served == 5 and TeacherCache(cache).count() == served


def test_third_party_loggers_are_redacted(canaries, caplog):
    """litellm/openai/httpx log records that carry a key (a debug dump, an exception) reach handlers redacted."""
    from omniopd_verl.teachers.secrets import Redactor, install_log_redaction

    install_log_redaction(Redactor())
    caplog.set_level(logging.DEBUG)
    key = canaries["ANTHROPIC_API_KEY"]
    logging.getLogger("LiteLLM").debug("POST headers={'x-api-key': '%s'}", key)
    try:
        raise RuntimeError(f"Incorrect API key provided: {key}")
    except RuntimeError:
        logging.getLogger("openai").exception("request failed")
    # litellm, once imported, masks its own header dumps as 'REDACTED' before our filter sees them
    assert key not in caplog.text
    assert "Incorrect API key provided: ***" in caplog.text
    assert "x-api-key': '***'" in caplog.text or "REDACTED" in caplog.text


# ---- a plugin written with aiohttp: its ClientResponseError carries `.status` (issue 21 §3) ------------------


class _AiohttpCompletions:
    """A third-party teacher's raw call written with aiohttp, as its docs suggest: raise_for_status()."""

    capabilities = TeacherCapabilities(supports_n=True, raw_completion=True, priced=False)

    def __init__(self, url, key):
        self.url, self.key, self.calls = url, key, 0

    async def sample_raw(self, requests):
        import aiohttp

        answers = []
        async with aiohttp.ClientSession() as session:
            for r in requests:
                self.calls += 1
                body = {"model": "tiny", "prompt": r.prompt, "n": r.n, "max_tokens": r.teacher_max_tokens}
                headers = {"Authorization": f"Bearer {self.key}"}
                async with session.post(f"{self.url}/completions", json=body, headers=headers) as resp:
                    resp.raise_for_status()
                    data = await resp.json()
                answers.append(RawAnswer([RawSample(c["text"], c["finish_reason"]) for c in data["choices"]]))
        return answers


def test_an_aiohttp_status_error_is_retried_after_its_retry_after_and_a_401_stops():
    import time

    from omniopd_verl.teachers.library import Teacher

    config = TeacherConfig(name="aiohttp_teacher", model="tiny", max_retries=2)
    options = {"backoff_base_s": 0.01, "backoff_max_s": 0.02}
    with serve_fault_server(faults=[Fault("rate_limit", retry_after=0.4)], api_key="sk-test-aio") as server:
        plugin = _AiohttpCompletions(server.url, "sk-test-aio")
        teacher = Teacher("aiohttp_teacher", plugin, config, options)
        t0 = time.perf_counter()
        [result] = asyncio.run(teacher.sample([request(0)]))
        waited = time.perf_counter() - t0
    assert result.texts is not None and len(result.texts) == N, result.error
    assert plugin.calls == 2 and teacher.metrics()["teacher/retries"] == 1
    assert waited >= 0.4  # the server's Retry-After, not the 0.01 s backoff
    with serve_fault_server(api_key="sk-test-aio") as server:  # a wrong key: 401, every call would fail alike
        plugin = _AiohttpCompletions(server.url, "sk-wrong-key-aio")
        teacher = Teacher("aiohttp_teacher", plugin, config, options)
        with pytest.raises(TeacherAuthError, match="HTTP 401"):
            asyncio.run(teacher.sample([request(0)]))
    assert plugin.calls == 1  # not retried


def test_aiohttp_connection_errors_are_retried():
    """aiohttp's connection errors subclass neither ConnectionError nor TimeoutError: retried by name."""
    from omniopd_verl.teachers.library import Teacher

    config = TeacherConfig(name="aiohttp_teacher", model="tiny", max_retries=2)
    options = {"backoff_base_s": 0.01, "backoff_max_s": 0.02}
    with serve_fault_server(faults=[Fault("disconnect")], api_key="sk-test-aio") as server:  # ServerDisconnectedError
        plugin = _AiohttpCompletions(server.url, "sk-test-aio")
        [result] = asyncio.run(Teacher("aiohttp_teacher", plugin, config, options).sample([request(0)]))
    assert result.texts is not None and plugin.calls == 2, result.error
    import socket

    with socket.socket() as probe:  # a port nothing listens on: ClientConnectorError
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    plugin = _AiohttpCompletions(closed, "k")
    teacher = Teacher("aiohttp_teacher", plugin, dataclasses.replace(config, max_retries=1), options)
    [result] = asyncio.run(teacher.sample([request(0)]))
    assert result.texts is None and "ClientConnectorError" in result.error
    assert plugin.calls == 2 and teacher.metrics()["teacher/retries"] == 1
