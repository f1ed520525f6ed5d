"""Issue 22 section 4: the local teacher server answers every bad request with a 4xx and one line, caps
what a request may ask, cuts slow clients, drops work of departed clients, refuses web pages, and
checks an API key. All against the real server on 127.0.0.1 (raw sockets where a client library would
refuse to send the bad request)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import httpx

from omniopd_verl.serving.openai_compat import Limits, serve_openai_compat
from omniopd_verl.testing import ScriptedGenerator, serve_recording_server

KEY = "sk-hardening-test-0123456789abcdef"


def _raw(server, request: bytes, timeout: float = 15.0) -> tuple[int, dict]:
    """Send raw bytes; (status, JSON body) of the reply. Fails (does not hang) if none comes in `timeout`."""
    host, port = server.root_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _length(data: bytes) -> int:
    match = re.search(rb"(?i)content-length: *(\d+)", data.split(b"\r\n\r\n", 1)[0])
    return int(match.group(1)) if match else 0


def _post(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    head = {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": str(len(body))}
    head.update(headers or {})
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items() if v is not None)
    return f"POST {path} HTTP/1.1\r\n{lines}\r\n".encode() + body


def _message(body: dict) -> str:
    return body["error"]["message"]


BAD_BODIES = {
    # path: [(JSON text, the one-line reason), ...]
    "/v1/completions": [
        ("[1, 2]", "request body=[1, 2] is invalid: allowed a JSON object"),
        ('{"prompt": 5}', "prompt=5 is invalid: allowed a string or a non-empty list of strings"),
        ('{"prompt": []}', "prompt=[] is invalid: allowed a string or a non-empty list of strings"),
        ('{"prompt": ["a", 1]}', "prompt=['a', 1] is invalid"),
        ('{"prompt": "x", "n": -1}', "n=-1 is invalid: allowed an integer in [1, 16]"),
        ('{"prompt": "x", "n": true}', "n=True is invalid: allowed an integer in [1, 16]"),
        ('{"prompt": "x", "max_tokens": -5}', "max_tokens=-5 is invalid: allowed an integer in [1, 1024]"),
        ('{"prompt": "x", "temperature": -1}', "temperature=-1 is invalid: allowed a finite number in [0, 2]"),
        ('{"prompt": "x", "temperature": NaN}', "temperature=nan is invalid: allowed a finite number"),
        ('{"prompt": "x", "top_p": 0}', "top_p=0 is invalid: allowed a finite number in (0, 1]"),
        ('{"prompt": "x", "seed": "x"}', "seed='x' is invalid: allowed an integer"),
        ('{"prompt": "x", "stream": true}', "stream=True is not supported"),
        ("{not json", "request body is not JSON"),
        ("[" * 200000, "request body is not JSON"),
    ],
    "/v1/chat/completions": [
        ('{"messages": "hi"}', "messages='hi' is invalid: allowed a non-empty list of messages"),
        ('{"messages": []}', "messages=[] is invalid"),
        ('{"messages": [{"role": "user", "content": 3}]}', "messages[0].content=3 is invalid"),
        ('{"messages": [{"role": "robot", "content": "hi"}]}', "messages[0].role='robot' is invalid"),
    ],
    "/v1/messages": [
        ('{"messages": [{"role": "user", "content": "hi"}]}', "max_tokens is required"),
    ],
}


def test_every_bad_request_gets_a_4xx_with_a_one_line_reason():
    with serve_openai_compat(generator=ScriptedGenerator()) as server:
        for path, cases in BAD_BODIES.items():
            for text, reason in cases:
                status, body = _raw(server, _post(path, text.encode()))
                message = body["error"]["message"]
                assert status == 400 and reason in message and "\n" not in message, (path, text, status, message)
                if path == "/v1/messages":
                    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        # the server is still fine afterwards
        r = httpx.post(f"{server.url}/completions", json={"prompt": "ok", "n": 2, "max_tokens": 3}, timeout=10)
        assert r.status_code == 200 and len(r.json()["choices"]) == 2


def test_bad_content_length_and_content_type_are_answered_not_hung():
    with serve_openai_compat(generator=ScriptedGenerator(), limits=Limits(max_body_bytes=1000)) as server:
        body = b'{"prompt": "x"}'
        cases = [
            ({"Content-Length": "abc"}, 400, "Content-Length='abc' is invalid: allowed a non-negative integer"),
            ({"Content-Length": "-1"}, 400, "Content-Length='-1' is invalid: allowed a non-negative integer"),
            ({"Content-Length": None}, 411, "Content-Length is required"),
            ({"Content-Length": "5000"}, 413, "Content-Length=5000 is too large: allowed at most 1000 bytes"),
            ({"Content-Type": "text/plain"}, 415, "Content-Type='text/plain' is invalid: allowed 'application/json'"),
            ({"Transfer-Encoding": "chunked"}, 411, "Transfer-Encoding is not supported"),
        ]
        for headers, status, reason in cases:
            got, reply = _raw(server, _post("/v1/completions", body, headers))
            assert (got, reason in _message(reply)) == (status, True), (headers, got, reply)


def test_caps_on_n_max_tokens_and_prompts_and_flags_that_change_them():
    with serve_openai_compat(generator=ScriptedGenerator()) as server:
        url = f"{server.url}/completions"
        for body, reason in [
            ({"prompt": "x", "n": 10000}, "n=10000 is invalid: allowed an integer in [1, 16]"),
            ({"prompt": "x", "max_tokens": 10**7}, "max_tokens=10000000 is invalid: allowed an integer in [1, 1024]"),
            ({"prompt": ["x"] * 65}, "prompt has 65 prompts: allowed at most 64 per request"),
        ]:
            r = httpx.post(url, json=body, timeout=10)
            assert r.status_code == 400 and reason in _message(r.json()), r.text
    with serve_openai_compat(generator=ScriptedGenerator(), limits=Limits(max_n=2, max_tokens=4)) as server:
        url = f"{server.url}/completions"
        assert httpx.post(url, json={"prompt": "x", "n": 2, "max_tokens": 4}, timeout=10).status_code == 200
        r = httpx.post(url, json={"prompt": "x", "n": 3}, timeout=10)
        assert "n=3 is invalid: allowed an integer in [1, 2]" in _message(r.json())


def test_a_prompt_beyond_the_models_context_is_refused_fast(tiny_model_path):
    from transformers import AutoConfig, AutoTokenizer

    from omniopd_verl.serving.openai_compat import TransformersGenerator

    context = AutoConfig.from_pretrained(tiny_model_path).max_position_embeddings
    prompt = "the cat sat on the mat. " * (context // 2)  # ~3 tokens a repeat: beyond the context
    tokens = len(AutoTokenizer.from_pretrained(tiny_model_path)(prompt)["input_ids"])
    assert tokens > context
    with serve_openai_compat(generator=TransformersGenerator(tiny_model_path)) as server:
        start = time.monotonic()
        r = httpx.post(f"{server.url}/completions", json={"prompt": prompt, "max_tokens": 8}, timeout=60)
        assert r.status_code == 400, r.text
        assert _message(r.json()) == (
            f"this model's context is {context} tokens; the request needs {tokens + 8} ({tokens} in the prompt,"
            f" max_tokens=8): allowed prompt tokens + max_tokens <= {context}"
        )
        assert time.monotonic() - start < 30
        # an empty prompt is valid on the wire, but this model has no token to start from
        r = httpx.post(f"{server.url}/completions", json={"prompt": "", "max_tokens": 4}, timeout=60)
        assert r.status_code == 400
        assert _message(r.json()) == "prompt='' is invalid: allowed a prompt of at least one token"
        # a prompt that fits, but not with its max_tokens
        short = "hello " * 10
        n_short = len(AutoTokenizer.from_pretrained(tiny_model_path)(short)["input_ids"])
        r = httpx.post(
            f"{server.url}/completions", json={"prompt": short, "max_tokens": context - n_short + 1}, timeout=60
        )
        assert r.status_code == 400 and f"max_tokens={context - n_short + 1}" in _message(r.json())


def _closed_by_server(sock: socket.socket, until: float, drip: bool) -> bool:
    """Drip one header byte every 0.2 s (each read succeeds in time) until the server closes the socket."""
    sock.settimeout(0.2)
    while time.monotonic() < until:
        try:
            if drip:
                sock.send(b"X")
            if sock.recv(1024) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:  # reset / broken pipe: closed by the server
            return True
    return False


def test_slow_clients_are_cut_and_threads_stay_bounded():
    with serve_openai_compat(generator=ScriptedGenerator(), request_timeout_s=1.0, max_connections=8) as server:
        host, port = server.root_url.removeprefix("http://").split(":")
        before = threading.active_count()
        socks = [socket.create_connection((host, int(port)), timeout=5) for _ in range(40)]
        for s in socks:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never finishes
        time.sleep(0.5)
        assert threading.active_count() <= before + 8 + 2  # the cap, plus slack for the server's own
        # a client that drips a byte at a time is cut at the request deadline, not held forever
        dripper = socket.create_connection((host, int(port)), timeout=5)
        deadline = time.monotonic() + 1.0 + 10
        for s in socks:
            s.close()
        dripper.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        assert _closed_by_server(dripper, deadline, drip=True), "a dripping client held its connection"
        dripper.close()
        r = httpx.post(f"{server.url}/completions", json={"prompt": "x", "max_tokens": 2}, timeout=10)
        assert r.status_code == 200


def test_requests_over_the_connection_cap_get_503():
    with serve_openai_compat(generator=ScriptedGenerator(), max_connections=2, request_timeout_s=5) as server:
        host, port = server.root_url.removeprefix("http://").split(":")
        held = [socket.create_connection((host, int(port)), timeout=5) for _ in range(2)]
        time.sleep(0.3)
        status, body = _raw(server, _post("/v1/completions", b'{"prompt": "x"}'))
        assert status == 503 and "too many connections" in _message(body)
        for s in held:
            s.close()


class _SlowCountingGenerator:
    """Takes `seconds` per call and counts calls; `lock` makes the server serialise (as the real model)."""

    def __init__(self, seconds: float):
        self.seconds, self.calls, self.lock = seconds, 0, threading.Lock()

    def generate(self, call):
        self.calls += 1
        time.sleep(self.seconds)
        return ScriptedGenerator().generate(call)


def test_a_queued_request_whose_client_left_is_never_computed():
    generator = _SlowCountingGenerator(2.0)
    with serve_recording_server(generator=generator) as server:
        first = threading.Thread(
            target=httpx.post, args=(f"{server.url}/completions",), kwargs={"json": {"prompt": "a"}, "timeout": 30}
        )
        first.start()
        time.sleep(0.5)  # the first request holds the model
        host, port = server.root_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as gone:
            gone.sendall(_post("/v1/completions", b'{"prompt": "b"}'))
            time.sleep(0.3)
        first.join(timeout=30)
        time.sleep(1.0)  # the second request's turn came and went
        assert generator.calls == 1
        assert [r.status for r in server.requests] == [200, -1]


def test_web_pages_are_refused():
    generator = _SlowCountingGenerator(0.0)
    with serve_openai_compat(generator=generator) as server:
        body = b'{"prompt": "x", "max_tokens": 2}'
        status, reply = _raw(
            server, _post("/v1/completions", body, {"Origin": "http://evil.example", "Content-Type": "text/plain"})
        )
        assert status == 403 and "cross-origin request refused (Origin: http://evil.example)" in _message(reply)
        status, reply = _raw(server, _post("/v1/completions", body, {"Content-Type": "text/plain"}))
        assert status == 415
        r = httpx.get(f"{server.url}/models", headers={"Origin": "http://evil.example"}, timeout=10)
        assert r.status_code == 403
        r = httpx.options(f"{server.url}/completions", headers={"Origin": "http://evil.example"}, timeout=10)
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
        assert generator.calls == 0


def test_api_key_is_required_on_every_request_and_never_echoed():
    with serve_openai_compat(generator=ScriptedGenerator(), api_key=KEY) as server:
        wrong = "sk-wrong-key-value-999"
        r = httpx.post(f"{server.url}/completions", json={"prompt": "x"}, timeout=10)
        assert r.status_code == 401 and _message(r.json()) == (
            "missing API key: this server requires Authorization: Bearer <key>"
        )
        r = httpx.post(
            f"{server.url}/completions", json={"prompt": "x"}, headers={"Authorization": f"Bearer {wrong}"}, timeout=10
        )
        assert r.status_code == 401 and wrong not in r.text and KEY not in r.text
        r = httpx.post(
            f"{server.url}/messages",
            json={"max_tokens": 2, "messages": [{"role": "user", "content": "x"}]},
            headers={"x-api-key": wrong},
            timeout=10,
        )
        assert r.status_code == 401 and "x-api-key" in r.json()["error"]["message"]
        assert httpx.get(f"{server.url}/models", timeout=10).status_code == 401
        ok = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(f"{server.url}/models", headers=ok, timeout=10).status_code == 200
        assert httpx.post(f"{server.url}/completions", json={"prompt": "x"}, headers=ok, timeout=10).status_code == 200
        r = httpx.post(
            f"{server.url}/messages",
            json={"max_tokens": 2, "messages": [{"role": "user", "content": "x"}]},
            headers={"x-api-key": KEY},
            timeout=10,
        )
        assert r.status_code == 200


def test_the_command_takes_its_key_from_the_environment_and_its_caps_from_flags(tiny_model_path, start_teacher_server):
    text = start_teacher_server(
        tiny_model_path, "--max-n", "2", "--request-timeout", "5", env={"OMNIOPD_SERVER_API_KEY": KEY}
    )
    assert "an API key is required" in text and KEY not in text, text
    assert "n <= 2" in text and "context 2048 tokens" in text
    base = re.search(r"--teacher-api-base (http://127\.0\.0\.1:\d+/v1)", text).group(1)
    assert httpx.post(f"{base}/completions", json={"prompt": "x"}, timeout=30).status_code == 401
    ok = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(f"{base}/completions", json={"prompt": "x", "n": 3}, headers=ok, timeout=30)
    assert r.status_code == 400 and "n=3 is invalid: allowed an integer in [1, 2]" in _message(r.json())
    r = httpx.post(f"{base}/completions", json={"prompt": "x", "n": 2, "max_tokens": 2}, headers=ok, timeout=60)
    assert r.status_code == 200 and len(r.json()["choices"]) == 2


def test_the_runtime_server_keeps_no_request_and_no_key():
    """A long run must not grow the server's memory, nor keep an Authorization header it has no use for:
    the server counts requests per endpoint (unknown paths under one counter) and keeps none of them."""
    import gc

    from omniopd_verl.serving.openai_compat import COUNTED_PATHS, ReceivedRequest

    with serve_openai_compat(generator=ScriptedGenerator(), api_key=KEY) as server:
        auth = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(timeout=10) as client:
            for i in range(30):
                r = client.post(f"{server.url}/completions", json={"prompt": f"p{i}", "max_tokens": 2}, headers=auth)
                assert r.status_code == 200
            for i in range(20):  # twenty different unknown paths: still one counter
                assert client.get(f"{server.root_url}/probe/{i}", headers=auth).status_code == 404
        assert server.calls("/v1/completions") == 30 and server.calls("other") == 20 and server.calls() == 50
        assert set(server._counts) <= {*COUNTED_PATHS, "other"}
        assert not any(isinstance(v, list) for v in vars(server).values())  # no per-request list
        host = server.root_url.removeprefix("http://")
    for _ in range(100):  # no request outlives its handling (a handler thread may still be finishing)
        gc.collect()
        # this server's records only: other tests' recording servers (module fixtures) legitimately keep theirs
        live = [o for o in gc.get_objects() if isinstance(o, ReceivedRequest) and o.headers.get("host") == host]
        if not live:
            break
        time.sleep(0.1)
    assert live == []
    record = ReceivedRequest.from_headers("/v1/completions", {"Authorization": f"Bearer {KEY}", "X-Trace": "t"})
    assert record.headers == {"x-trace": "t"} and KEY not in repr(record)
