"""Issue 22 §2, §3, §5 in the teacher library, against the real fault server on 127.0.0.1.

- §2 the cache knows which teacher answered (address without credentials, weights digest the server
  reports), validates what it reads, and stores texts cut to what the audit can use;
- §3 the budget cannot be starved: usage a server omits or reports impossibly is counted by us, a call
  whose worst case does not fit is never sent, a call abandoned at the timeout is counted;
- §5 a cache that cannot be written is refused up front, or dropped mid-run with the answers kept; a lone
  surrogate is a malformed answer (retried); credentials in options and in the API base never come back;
  the litellm teacher sends no provider key to a host the user did not name it for.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
import subprocess

import pytest

from omniopd_verl import registry
from omniopd_verl.config import TeacherConfig
from omniopd_verl.errors import ConfigError
from omniopd_verl.teachers import TeacherAuthError, TeacherBudgetExceeded, TeacherRequest
from omniopd_verl.teachers.cache import cache_key
from omniopd_verl.testing import Fault, ScriptedGenerator, key_digest, serve_fault_server

N = 4  # four texts: a tampered {"texts": "abcd"} has the right length as a string
PRICES = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.002}
COMPLETIONS = "/v1/completions"


def make(server, cache=None, **kw):
    options = {"backoff_base_s": 0.01, "backoff_max_s": 0.02, **kw.pop("options", {})}
    config = dict(name="openai_completions", model="local-teacher", api_base=server.url, max_retries=2, timeout_s=10.0)
    config.update(options=options, cache_path=None if cache is None else str(cache), **kw)
    return registry.create_teacher(TeacherConfig(**config))


def request(i, *, context=None):
    return TeacherRequest(
        f"u{i}:{i}",
        f"Question {i}? Answer:",
        " The answer is",
        n=N,
        student_tokens=4,
        seed=10 + i,
        teacher_context=context,
    )


def prompt_bytes(req: TeacherRequest) -> int:
    """What the raw-completion teacher is sent (no context here): prompt text + partial answer, in bytes."""
    return len((req.prompt_text + req.response_prefix).encode())


MAX_TOKENS = 5  # ceil(student_tokens 4 x max_tokens_factor 1.25)


def run(coro):
    return asyncio.run(coro)


@contextlib.contextmanager
def read_only(*paths, open_files=False):
    """Make files read-only for real. root ignores permission bits, so it gets the immutable flag (which
    also stops writes through descriptors already open); skipped where neither works."""
    if os.geteuid() != 0:
        if open_files:
            pytest.skip("only root can stop writes through an open descriptor (chattr +i)")
        modes = {p: os.stat(p).st_mode for p in paths}
        for p in paths:
            os.chmod(p, 0o444)
        try:
            yield
        finally:
            for p, mode in modes.items():
                os.chmod(p, mode)
        return
    done = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


# ---- §2 the cache's identity ----------------------------------------------------------------------------------


def test_the_cache_serves_only_the_teacher_that_answered(tmp_path):
    cache = tmp_path / "cache.sqlite"
    reqs = [request(i) for i in range(3)]
    other = ScriptedGenerator(fn=lambda call: [f" b{j}" for j in range(call.n)])
    with serve_fault_server() as a, serve_fault_server(generator=other) as b:
        a.weights_digest, b.weights_digest = "sha256:weights-a", "sha256:weights-b"
        first = run(make(a, cache).sample(reqs))
        # server B, same model name, other weights: asked, not served A's answers
        from_b = run(make(b, cache).sample(reqs))
        assert b.calls(COMPLETIONS) == 3
        assert [r.texts for r in from_b] == [[f" b{j}" for j in range(N)]] * 3
        # the same address now serving other weights: asked again
        a.weights_digest = "sha256:weights-a2"
        run(make(a, cache).sample(reqs))
        assert a.calls(COMPLETIONS) == 6
        # the same teacher (address and weights): served from the cache, also when the address carries
        # credentials (they are not part of who answered, and never reach the file)
        secret_base = a.url.replace("http://", "http://alice:pw-Secret-9431@")
        again = make(a, cache, api_base=secret_base)
        cached = run(again.sample(reqs))
        assert a.calls(COMPLETIONS) == 6 and all(r.cached for r in cached)
        assert [r.texts for r in cached] == [r.texts for r in first]  # (A's scripted texts do not depend on weights)
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"pw-Secret-9431" not in blob and base64.b64encode(b"alice:pw-Secret-9431") not in blob


def test_keys_of_teachers_without_an_api_base_are_unchanged():
    """Decision: a teacher without an api_base (a provider's own endpoint, an in-process model) keeps the key
    of earlier versions, so its existing cache entries stay valid. The formula, written out independently:"""
    import hashlib

    fields = {
        "backend": "litellm",
        "model": "anthropic/claude-haiku-4-5",
        "prefix": hashlib.sha256(b"text").hexdigest(),
        "n": 4,
        "max_tokens": 5,
        "temperature": 1.0,
        "top_p": 1.0,
        "seed": 7,
    }
    old = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    args = dict(
        backend="litellm",
        model="anthropic/claude-haiku-4-5",
        prefix="text",
        n=4,
        teacher_max_tokens=5,
        temperature=1.0,
        top_p=1.0,
        seed=7,
    )
    assert cache_key(**args) == old
    assert cache_key(**args, teacher={"api_base": "http://127.0.0.1:1/v1"}) != old


@pytest.mark.parametrize(
    "tampered",
    [json.dumps({"texts": "abcd"}), json.dumps({"texts": [1, 2, 3, 4]}), "[" * 100_000 + "]" * 100_000, "not json"],
    ids=["string", "numbers", "deeply-nested", "not-json"],
)
def test_a_tampered_cache_entry_is_a_miss(tmp_path, tampered, caplog):
    cache = tmp_path / "cache.sqlite"
    with serve_fault_server() as server:
        first = run(make(server, cache).sample([request(0)]))
        with sqlite3.connect(cache) as db:
            db.execute("UPDATE teacher_cache SET value = ?", (tampered,))
        teacher = make(server, cache)
        second = run(teacher.sample([request(0)]))
        assert second[0].texts == first[0].texts and not second[0].cached  # asked again, never "a b c d"
        assert teacher.metrics()["teacher/cache_invalid"] == 1
        assert server.calls(COMPLETIONS) == 2
        assert "teacher cache entry for u0:0 is invalid" in caplog.text
        # the fresh answer replaced the bad entry
        third = run(make(server, cache).sample([request(0)]))
        assert third[0].cached and server.calls(COMPLETIONS) == 2


def test_stored_texts_are_cut_to_what_the_audit_can_use(tmp_path):
    cache = tmp_path / "cache.sqlite"
    padded = " w" * 1_000_000  # a server that ignores max_tokens: 2 MB per text
    with serve_fault_server(generator=ScriptedGenerator(fn=lambda call: [padded] * call.n)) as server:
        results = run(make(server, cache).sample([request(0)]))
    keep = MAX_TOKENS * 256  # MAX_CHARS_PER_TOKEN per asked token
    assert results[0].texts == [padded[:keep]] * N
    with sqlite3.connect(cache) as db:
        (stored,) = db.execute("SELECT length(value) FROM teacher_cache").fetchone()
    assert stored < N * keep + 500  # ~5 KB, not 8 MB


# ---- §3 a budget that cannot be starved --------------------------------------------------------------------------


def words_cost(server) -> float:
    """What the scripted server's own usage (words) prices to over every answer it served."""
    total = 0.0
    for q in server.requests:
        if q.path == COMPLETIONS and q.status == 200:
            total += 0.001 * len(q.body["prompt"].split()) + 0.002 * N * min(8, q.body["max_tokens"])
    return total


def test_a_server_without_usage_cannot_spend_past_the_budget():
    with serve_fault_server(faults=[Fault("no_usage", times=10_000)]) as server:
        teacher = make(server, max_cost_usd=0.4, max_concurrency=1, options=PRICES)
        with pytest.raises(TeacherBudgetExceeded, match=r"max_cost_usd=\$0.4"):
            run(teacher.sample([request(i) for i in range(40)]))
        m = teacher.metrics()
        calls = server.calls(COMPLETIONS)
        assert 0 < calls < 40 and m["teacher/calls"] == calls
        assert m["teacher/usage_estimated"] == calls  # said in the metrics
        assert m["teacher/cost_usd"] <= 0.4
        assert words_cost(server) <= m["teacher/cost_usd"]  # our count never below what was served
        # our count: one token per byte of what was sent and of what came back, at the prices
        sent = sum(len(q.body["prompt"].encode()) for q in server.requests if q.path == COMPLETIONS)
        assert m["teacher/prompt_tokens"] == sent


def test_negative_usage_is_replaced_by_our_count():
    with serve_fault_server(faults=[Fault("bad_usage")]) as server:
        teacher = make(server, options=PRICES)
        result = run(teacher.sample([request(0)]))[0]
    m = teacher.metrics()
    texts_bytes = sum(len(t.encode()) for t in result.texts)
    assert (m["teacher/prompt_tokens"], m["teacher/completion_tokens"]) == (prompt_bytes(request(0)), texts_bytes)
    assert m["teacher/cost_usd"] == pytest.approx(0.001 * prompt_bytes(request(0)) + 0.002 * texts_bytes)
    assert m["teacher/usage_estimated"] == 1


def test_a_call_whose_worst_case_exceeds_the_budget_is_never_sent():
    context = "word " * 200_000  # ~$200 of prompt per call at $0.001/token, on a $1 budget
    with serve_fault_server() as server:
        teacher = make(server, max_cost_usd=1.0, max_concurrency=3, options=PRICES)
        with pytest.raises(
            TeacherBudgetExceeded, match=r"could cost up to \$1000\.[0-9]+ .* than the \$1\.000000 left"
        ):
            run(teacher.sample([request(i, context=context) for i in range(3)]))
        assert server.calls(COMPLETIONS) == 0 and teacher.metrics()["teacher/cost_usd"] == 0


def test_a_call_abandoned_at_the_timeout_is_counted_at_its_worst_case():
    with serve_fault_server(faults=[Fault("hang", hang_s=3.0)]) as server:
        teacher = make(server, timeout_s=0.5, max_retries=0, on_failure="drop", options=PRICES)
        result = run(teacher.sample([request(0)]))[0]
    assert result.texts is None
    m = teacher.metrics()
    worst = 0.001 * prompt_bytes(request(0)) + 0.002 * N * MAX_TOKENS
    assert m["teacher/abandoned_calls"] == 1 and m["teacher/calls"] == 1
    assert m["teacher/cost_usd"] == pytest.approx(worst)


# ---- §5 nothing paid is lost, nothing secret leaks ---------------------------------------------------------------


def test_a_read_only_cache_is_refused_before_any_call(tmp_path):
    cache = tmp_path / "cache.sqlite"
    with serve_fault_server() as server:
        run(make(server, cache).sample([request(0)]))
        with sqlite3.connect(cache) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with read_only(cache), pytest.raises(ConfigError) as info:
            make(server, cache)
        assert str(info.value) == (
            f"omniopd.teacher.cache_path={str(cache)!r} cannot be written (read-only file or folder): make it "
            "writable, or pass another cache path"
        )
        assert server.calls(COMPLETIONS) == 1


def test_a_cache_that_stops_taking_writes_is_dropped_and_the_answers_kept(tmp_path, caplog):
    cache = tmp_path / "cache.sqlite"
    with serve_fault_server() as server:
        teacher = make(server, cache)
        run(teacher.sample([request(0)]))
        # the database and its write-ahead log (the shared-memory index stays: SQLite maps it)
        with read_only(cache, tmp_path / "cache.sqlite-wal", open_files=True):
            results = run(teacher.sample([request(i) for i in range(1, 4)]))
        assert all(r.texts is not None and len(r.texts) == N for r in results)  # paid answers kept
        assert server.calls(COMPLETIONS) == 4
        assert "cannot be written" in caplog.text and "continuing WITHOUT the cache" in caplog.text


def test_a_lone_surrogate_is_a_malformed_answer_and_retried(tmp_path):
    with serve_fault_server(faults=[Fault("surrogate")]) as server:
        teacher = make(server, tmp_path / "cache.sqlite")
        result = run(teacher.sample([request(0)]))[0]
    assert result.texts is not None and result.retries == 1
    assert not any("\ud800" in t for t in result.texts)
    assert server.calls(COMPLETIONS) == 2


@pytest.fixture
def provider_keys(monkeypatch):
    keys = {"OPENAI_API_KEY": "sk-canary-openai-Zq81", "ANTHROPIC_API_KEY": "sk-canary-anthropic-Lw27"}
    for var, value in keys.items():
        monkeypatch.setenv(var, value)
    return keys


@pytest.mark.parametrize(
    ("model", "root"),
    [("openai/local-teacher", False), ("anthropic/claude-haiku-4-5", True)],
    ids=["chat", "anthropic"],
)
def test_the_litellm_teacher_sends_no_provider_key_to_a_custom_host(provider_keys, model, root):
    with serve_fault_server() as server:
        base = server.root_url if root else server.url
        teacher = registry.create_teacher(
            TeacherConfig(name="litellm", model=model, api_base=base, max_retries=0, timeout_s=10.0)
        )
        results = run(teacher.sample([request(0)]))
        assert results[0].texts is not None
        sent = json.dumps([q.headers for q in server.requests])
        digests = {q.key_sha256 for q in server.requests}
    assert server.requests and not [v for v in provider_keys.values() if v in sent or key_digest(v) in digests]


def test_a_key_in_litellm_extra_kwargs_is_redacted_from_a_401(caplog):
    caplog.set_level(logging.DEBUG)
    secret = "sk-in-extra-kwargs-Hh7302"
    with serve_fault_server(api_key="sk-the-server-wants-this") as server:
        teacher = registry.create_teacher(
            TeacherConfig(
                name="litellm",
                model="openai/local-teacher",
                api_base=server.url,
                max_retries=0,
                options={"extra_kwargs": {"api_key": secret}},
            )
        )
        with pytest.raises(TeacherAuthError) as info:
            run(teacher.sample([request(0)]))
        assert server.requests[-1].key_sha256 == key_digest(secret)  # it was sent (and echoed)
    assert "HTTP 401" in str(info.value) and "***" in str(info.value)
    assert secret not in str(info.value) and secret not in caplog.text


@pytest.mark.parametrize("fmt", ["completions", "chat"])
def test_credentials_in_the_api_base_never_come_back(fmt, caplog):
    caplog.set_level(logging.DEBUG)
    pair = "bob:pw-Base-5520"
    encoded = base64.b64encode(pair.encode()).decode()
    with serve_fault_server(api_key="sk-the-server-wants-this") as server:
        base = server.url.replace("http://", f"http://{pair}@")
        kind = "openai_completions" if fmt == "completions" else "litellm"
        model = "local-teacher" if fmt == "completions" else "openai/local-teacher"
        teacher = registry.create_teacher(
            TeacherConfig(name=kind, model=model, api_base=base, max_retries=0, on_failure="drop")
        )
        try:  # a 401 (the server refuses, echoing the Basic credentials it got), or a failed request
            message = run(teacher.sample([request(0)]))[0].error
        except TeacherAuthError as exc:
            message = str(exc)
    assert message and ("HTTP 401" in message or "AUTHORIZATION" in message)
    for text in (message, caplog.text):
        assert "pw-Base-5520" not in text and encoded not in text


def test_a_key_given_as_the_variable_name_is_not_echoed():
    key = "sk-proj-Ab12Cd34Ef56"
    with pytest.raises(ConfigError) as info:
        TeacherConfig(name="openai_completions", model="m", api_base="http://127.0.0.1:1/v1", api_key_env=key)
    assert key not in str(info.value)
    assert "api_key_env is not the name of an environment variable" in str(info.value)


def test_a_key_in_the_options_is_not_part_of_the_cache_key(tmp_path, provider_keys):
    """Rotating a key placed in extra_kwargs keeps the cache (and the key is not hashed into it)."""
    cache = tmp_path / "cache.sqlite"
    with serve_fault_server() as server:

        def teacher(key):
            options = {"extra_kwargs": {"api_key": key}}
            config = TeacherConfig(name="litellm", model="openai/local-teacher", api_base=server.url, max_retries=0)
            return registry.create_teacher(dataclasses.replace(config, cache_path=str(cache), options=options))

        run(teacher("sk-old-Key-111111").sample([request(0)]))
        again = run(teacher("sk-new-Key-222222").sample([request(0)]))
        assert again[0].cached and server.calls("/v1/chat/completions") == 1
