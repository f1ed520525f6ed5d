"""The local OpenAI/Anthropic-compatible server speaks the three wire formats and injects faults on demand."""

from __future__ import annotations

import time

import httpx
import pytest

from omniopd_verl.serving.openai_compat import GenerationCall, serve_openai_compat
from omniopd_verl.testing import Fault, ScriptedGenerator, key_digest, serve_fault_server

KEY = "sk-test-server-0123456789"


def test_completions_chat_and_messages_wire_formats():
    with serve_fault_server(api_key=KEY) as server:
        auth = {"Authorization": f"Bearer {KEY}"}
        r = httpx.post(
            f"{server.url}/completions",
            headers=auth,
            json={"model": "m", "prompt": "Once upon", "n": 3, "max_tokens": 4, "seed": 7},
        )
        body = r.json()
        assert r.status_code == 200 and body["object"] == "text_completion"
        texts = [c["text"] for c in body["choices"]]
        expected = ScriptedGenerator().generate(
            GenerationCall("completions", "Once upon", None, 3, 4, 1.0, 1.0, 7, "m")
        )
        assert texts == expected and len(set(texts)) == 3
        assert [len(t.split()) for t in texts] == [4, 4, 4]  # one word per token, capped by max_tokens
        assert body["usage"]["completion_tokens"] == 12

        r = httpx.post(
            f"{server.url}/chat/completions",
            headers=auth,
            json={"model": "m", "n": 2, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert [c["message"]["role"] for c in r.json()["choices"]] == ["assistant", "assistant"]

        r = httpx.post(
            f"{server.url}/messages",
            headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
            json={
                "model": "m",
                "max_tokens": 3,
                "system": "be brief",
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure"}],
            },
        )
        body = r.json()
        assert body["type"] == "message" and body["content"][0]["type"] == "text"
        assert body["stop_reason"] == "max_tokens"

        # a list prompt gives n choices per prompt, prompt-major (OpenAI semantics)
        r = httpx.post(f"{server.url}/completions", headers=auth, json={"prompt": ["a", "b"], "n": 2, "max_tokens": 2})
        assert len(r.json()["choices"]) == 4

        assert httpx.post(f"{server.url}/completions", json={"prompt": "x"}).status_code == 401
        # the key that was sent, kept as its digest only: no recorded header holds a credential
        assert [q.key_sha256 for q in server.requests[:3]] == [key_digest(KEY)] * 3
        assert not any(h in q.headers for q in server.requests for h in ("authorization", "x-api-key"))
        assert server.calls("/v1/completions") == 3


def test_faults_are_injected_in_order_and_by_match():
    faults = [
        Fault("rate_limit", retry_after=0.25),
        Fault("server_error"),
        Fault("malformed"),
        Fault("bad_schema"),
        Fault("short", choices=1),
        Fault("server_error", match="special"),
    ]
    with serve_fault_server(faults=faults) as server:
        url = f"{server.url}/completions"
        req = {"prompt": "plain", "n": 3, "max_tokens": 2}
        r = httpx.post(url, json=req)
        assert r.status_code == 429 and r.headers["retry-after"] == "0.25"
        assert httpx.post(url, json=req).status_code == 500
        r = httpx.post(url, json=req)
        assert r.status_code == 200
        with pytest.raises(ValueError):
            r.json()
        assert "choices" not in httpx.post(url, json=req).json()
        assert len(httpx.post(url, json=req).json()["choices"]) == 1
        assert len(httpx.post(url, json=req).json()["choices"]) == 3  # 'special' fault does not match
        assert httpx.post(url, json={**req, "prompt": "a special one"}).status_code == 500
        assert server.faults_left() == 0
        assert [q.fault for q in server.requests] == [
            "rate_limit",
            "server_error",
            "malformed",
            "bad_schema",
            "short",
            None,
            "server_error",
        ]


def test_hang_and_disconnect_faults():
    with serve_fault_server(faults=[Fault("hang", hang_s=4.0), Fault("disconnect")]) as server:
        url = f"{server.url}/completions"
        start = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json={"prompt": "p", "max_tokens": 1}, timeout=0.3)
        assert time.monotonic() - start < 3.5  # the client gave up, long before the 4 s hang ended (slack for load)
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(url, json={"prompt": "p", "max_tokens": 1})
        assert httpx.post(url, json={"prompt": "p", "max_tokens": 1}).status_code == 200


def test_latency_is_added_per_call():
    with serve_fault_server(latency_s=0.2) as server:
        start = time.monotonic()
        httpx.post(f"{server.url}/completions", json={"prompt": "p", "max_tokens": 1})
        assert time.monotonic() - start >= 0.2


def test_transformers_generator_serves_a_tiny_model(tiny_model_path):
    from omniopd_verl.serving.openai_compat import TransformersGenerator

    with serve_openai_compat(generator=TransformersGenerator(tiny_model_path)) as server:
        r = httpx.post(
            f"{server.url}/completions", timeout=60, json={"prompt": "The cat", "n": 2, "max_tokens": 5, "seed": 3}
        )
        texts = [c["text"] for c in r.json()["choices"]]
        r2 = httpx.post(
            f"{server.url}/completions", timeout=60, json={"prompt": "The cat", "n": 2, "max_tokens": 5, "seed": 3}
        )
        assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
        assert [c["text"] for c in r2.json()["choices"]] == texts  # seeded
        r = httpx.post(
            f"{server.url}/chat/completions",
            timeout=60,
            json={"n": 1, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200 and len(r.json()["choices"]) == 1
