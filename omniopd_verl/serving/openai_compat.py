"""A small real HTTP teacher server on 127.0.0.1: OpenAI chat, OpenAI completions, Anthropic messages.

Two uses: serve a local CPU teacher to any OpenAI-compatible client (`omniopd-verl` or otherwise), and
test the HTTP teacher backends against a real socket with injected faults.

    from omniopd_verl.serving.openai_compat import Fault, ScriptedGenerator, serve_openai_compat

    with serve_openai_compat(generator=ScriptedGenerator(), faults=[Fault("rate_limit", retry_after=1)],
                             api_key="sk-test", latency_s=0.0) as server:
        server.url              # "http://127.0.0.1:<port>/v1"  (pass as TeacherConfig.api_base)
        server.root_url         # "http://127.0.0.1:<port>"  (Anthropic clients append /v1/messages themselves)
        server.requests         # list[ReceivedRequest]: path, headers (lower-cased), body, status, fault
        server.calls(path)      # how many requests reached `path` ("/v1/completions", ...)

Endpoints: POST /v1/completions (prompt: str or list of str, n, max_tokens, temperature, top_p, seed),
POST /v1/chat/completions (messages, n, max_tokens | max_completion_tokens, ...), POST /v1/messages
(Anthropic: messages, system, max_tokens; one sample per call, a trailing assistant message is a
prefill to continue), GET /v1/models. Paths also work without the /v1 prefix.

Generators (`generator=`) implement `generate(call: GenerationCall) -> list[str]` (exactly call.n texts):
- `ScriptedGenerator`: deterministic texts derived from (prompt, sample index, seed); no model.
- `TransformersGenerator`: a local causal LM (a path or "smollm2-135m-instruct") through the
  `transformers` teacher's batched sampler; chat requests are rendered with the model's chat template.

Faults (`faults=`) are consumed in order, each by `times` matching requests (`match`: a substring of
the request's prompt/messages JSON, `path`: only that endpoint); a request no fault matches is served
normally. Kinds: "rate_limit" (429 + Retry-After), "server_error" (500), "hang" (sleep `hang_s`, then
answer, normally after the client gave up), "malformed" (200 with a body that is not JSON),
"bad_schema" (200 JSON without choices), "short" (fewer choices than asked), "disconnect" (close the
socket without answering). `latency_s` adds a fixed delay to every answered request (benchmarks).

If `api_key` is set, requests without it (Bearer or x-api-key) get 401. The server never logs request
headers; it only records them in memory so tests can prove a key was sent (and nowhere else).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

FAULT_KINDS = ("rate_limit", "server_error", "hang", "malformed", "bad_schema", "short", "disconnect")


@dataclass
class GenerationCall:
    """What one HTTP request asks the generator for."""

    endpoint: str  # "completions" | "chat" | "messages"
    prompt: str | None  # raw prefix (completions)
    messages: list[dict[str, Any]] | None  # chat messages incl. a system message if any (chat, messages)
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    model: str | None


class Generator(Protocol):
    def generate(self, call: GenerationCall) -> list[str]: ...


@dataclass
class Fault:
    kind: str
    times: int = 1
    match: str | None = None  # substring of the request's prompt / messages JSON
    path: str | None = None  # e.g. "/v1/completions"
    retry_after: float | None = None  # rate_limit: the Retry-After header value, seconds
    hang_s: float = 30.0  # hang: how long to sleep before answering
    choices: int | None = None  # short: how many choices to return (default n - 1)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"Fault.kind={self.kind!r} is invalid: allowed one of {list(FAULT_KINDS)}")
        if self.times < 1:
            raise ValueError(f"Fault.times={self.times!r} is invalid: allowed an integer >= 1")


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: Any
    status: int = 0
    fault: str | None = None
    time: float = field(default_factory=time.monotonic)


class ScriptedGenerator:
    """Deterministic texts: "<word> w1 w2 ..." derived from the prompt, sample index and seed.

    The texts differ across samples and seeds (so caching and seeding are observable) and have
    `words` words (capped by max_tokens, one word per token), each preceded by a space.
    """

    def __init__(self, words: int = 8, fn: Callable[[GenerationCall], list[str]] | None = None):
        self.words = words
        self.fn = fn

    def generate(self, call: GenerationCall) -> list[str]:
        if self.fn is not None:
            return self.fn(call)
        source = call.prompt if call.prompt is not None else json.dumps(call.messages, sort_keys=True)
        texts = []
        for i in range(call.n):
            digest = hashlib.sha256(f"{source}\x00{call.seed}\x00{i}".encode()).hexdigest()
            count = max(1, min(self.words, call.max_tokens))
            texts.append("".join(f" w{digest[2 * j : 2 * j + 2]}" for j in range(count)))
        return texts


class TransformersGenerator:
    """A local causal LM behind the server (CPU teacher). Generation is serialised by a lock."""

    def __init__(self, model: str, *, device: str = "cpu"):
        from omniopd_verl.teachers.transformers_local import LocalSampler

        self.sampler = LocalSampler.load(model, device=device)
        self._lock = threading.Lock()

    def generate(self, call: GenerationCall) -> list[str]:
        if call.prompt is not None:
            prompt = call.prompt
        else:
            prompt = self.sampler.render_chat(call.messages or [])
        with self._lock:
            return self.sampler.sample(
                [prompt],
                n=call.n,
                max_new_tokens=call.max_tokens,
                temperature=call.temperature,
                top_p=call.top_p,
                seed=call.seed if call.seed is not None else 0,
            )[0]


class CompatServer:
    """A running server: `url`, the recorded `requests`, and the fault queue."""

    def __init__(
        self, generator: Generator, faults: Sequence[Fault], api_key: str | None, latency_s: float, model_name: str
    ):
        self.generator = generator
        self.faults = [dict(fault=f, left=f.times) for f in faults]
        self.api_key = api_key
        self.latency_s = latency_s
        self.model_name = model_name
        self.requests: list[ReceivedRequest] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self.url = ""
        self.root_url = ""

    def calls(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if path is None or r.path == path)

    def add_faults(self, faults: Sequence[Fault]) -> None:
        with self._lock:
            self.faults.extend(dict(fault=f, left=f.times) for f in faults)

    def faults_left(self) -> int:
        with self._lock:
            return sum(entry["left"] for entry in self.faults)

    def _take_fault(self, path: str, content: str) -> Fault | None:
        with self._lock:
            for entry in self.faults:
                fault = entry["fault"]
                if entry["left"] <= 0:
                    continue
                if fault.path is not None and fault.path != path:
                    continue
                if fault.match is not None and fault.match not in content:
                    continue
                entry["left"] -= 1
                return fault
        return None

    def _record(self, record: ReceivedRequest) -> None:
        with self._lock:
            self.requests.append(record)


def _canonical(path: str) -> str:
    path = path.split("?", 1)[0].rstrip("/")
    while path.startswith("/v1/v1/"):  # clients that append /v1/... to a base URL that already ends in /v1
        path = path[3:]
    return path if path.startswith("/v1/") else "/v1" + path


def _make_handler(server: CompatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real API servers do

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # never print requests (their headers carry API keys)

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None, raw: bytes | None = None):
            body = raw if raw is not None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (hang fault)
                pass

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            path = _canonical(self.path)
            server._record(ReceivedRequest(path, {k.lower(): v for k, v in self.headers.items()}, None, 200))
            if path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": server.model_name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"unknown path {path}", "type": "not_found"}})

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            path = _canonical(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            record = ReceivedRequest(path, headers, None)
            server._record(record)
            anthropic = path == "/v1/messages"
            try:
                body = json.loads(raw or b"{}")
                record.body = body
            except json.JSONDecodeError:
                record.status = 400
                return self._send(400, _error(anthropic, "invalid_request_error", "request body is not JSON"))
            if server.api_key is not None:
                sent = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
                if sent != server.api_key:
                    record.status = 401
                    return self._send(401, _error(anthropic, "authentication_error", "invalid API key"))
            try:
                call = _parse_call(path, body)
            except (KeyError, TypeError, ValueError) as exc:
                record.status = 400
                return self._send(400, _error(anthropic, "invalid_request_error", f"bad request: {exc}"))
            if call is None:
                record.status = 404
                return self._send(404, _error(anthropic, "not_found_error", f"unknown path {path}"))
            content = call.prompt if call.prompt is not None else json.dumps(call.messages)
            fault = server._take_fault(path, content if isinstance(content, str) else json.dumps(content))
            record.fault = fault.kind if fault else None
            if fault is not None and fault.kind == "disconnect":
                record.status = -1
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass
                return None
            if fault is not None and fault.kind == "rate_limit":
                record.status = 429
                extra = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
                return self._send(429, _error(anthropic, "rate_limit_error", "rate limited (injected)"), extra)
            if fault is not None and fault.kind == "server_error":
                record.status = 500
                return self._send(500, _error(anthropic, "api_error", "internal error (injected)"))
            if fault is not None and fault.kind == "hang":
                time.sleep(fault.hang_s)
            if server.latency_s:
                time.sleep(server.latency_s)
            if fault is not None and fault.kind == "malformed":
                record.status = 200
                return self._send(200, None, raw=b'{"choices": [ this is not json')
            if fault is not None and fault.kind == "bad_schema":
                record.status = 200
                return self._send(200, {"id": "x", "object": "unexpected"})
            prompts = call.prompt if isinstance(call.prompt, list) else [call.prompt]
            groups = []
            for prompt in prompts:
                one = GenerationCall(**{**call.__dict__, "prompt": prompt})
                texts = server.generator.generate(one)
                if len(texts) != call.n:
                    raise RuntimeError(f"generator returned {len(texts)} texts, asked for {call.n}")
                groups.append((prompt, texts))
            if fault is not None and fault.kind == "short":
                keep = fault.choices if fault.choices is not None else max(0, call.n - 1)
                groups = [(p, texts[:keep]) for p, texts in groups]
            record.status = 200
            self._send(200, _response(path, call, groups, server.model_name))

    return Handler


def _error(anthropic: bool, kind: str, message: str) -> dict[str, Any]:
    if anthropic:
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": kind, "code": None}}


def _parse_call(path: str, body: dict[str, Any]) -> GenerationCall | None:
    common = dict(
        temperature=float(body.get("temperature", 1.0)),
        top_p=float(body.get("top_p", 1.0)),
        seed=body.get("seed"),
        model=body.get("model"),
    )
    if path == "/v1/completions":
        prompt = body["prompt"]
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not (isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(p, str) for p in prompt))):
            raise ValueError("prompt must be a string or a list of strings")
        return GenerationCall(
            "completions", prompt, None, int(body.get("n", 1)), int(body.get("max_tokens", 16)), **common
        )
    if path == "/v1/chat/completions":
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 16))
        return GenerationCall(
            "chat", None, _plain_messages(body["messages"]), int(body.get("n", 1)), int(max_tokens), **common
        )
    if path == "/v1/messages":
        messages = _plain_messages(body["messages"])
        system = body.get("system")
        if system:
            text = system if isinstance(system, str) else "".join(part.get("text", "") for part in system)
            messages = [{"role": "system", "content": text}, *messages]
        return GenerationCall("messages", None, messages, 1, int(body["max_tokens"]), **common)
    return None


def _plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with string content (OpenAI/Anthropic content-part lists joined)."""
    plain = []
    for message in messages:
        content = message.get("content", "")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        plain.append({"role": message["role"], "content": content})
    return plain


def _usage_words(text: str) -> int:
    return len(text.split())


def _response(path: str, call: GenerationCall, groups: list[tuple[Any, list[str]]], model: str) -> dict[str, Any]:
    prompt_tokens = sum(_usage_words(p if p is not None else json.dumps(call.messages)) for p, _ in groups)
    completion_tokens = sum(_usage_words(t) for _, texts in groups for t in texts)
    created = int(time.time())
    rid = hashlib.sha256(f"{time.monotonic_ns()}".encode()).hexdigest()[:16]

    def finish(text: str) -> str:
        return "length" if _usage_words(text) >= call.max_tokens else "stop"

    if path == "/v1/messages":
        text = groups[0][1][0] if groups[0][1] else ""
        content = [{"type": "text", "text": text}] if groups[0][1] else []
        return {
            "id": f"msg_{rid}",
            "type": "message",
            "role": "assistant",
            "model": call.model or model,
            "content": content,
            "stop_reason": "max_tokens" if finish(text) == "length" else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
        }
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if path == "/v1/chat/completions":
        choices = [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish(t), "logprobs": None}
            for i, t in enumerate(groups[0][1])
        ]
        return {
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion",
            "created": created,
            "model": call.model or model,
            "choices": choices,
            "usage": usage,
        }
    choices = []
    for _, texts in groups:
        for t in texts:
            choices.append({"index": len(choices), "text": t, "logprobs": None, "finish_reason": finish(t)})
    return {
        "id": f"cmpl-{rid}",
        "object": "text_completion",
        "created": created,
        "model": call.model or model,
        "choices": choices,
        "usage": usage,
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # hung handlers (hang fault) must not block shutdown
    request_queue_size = 1024  # the default listen backlog of 5 resets connections under concurrent load


@contextmanager
def serve_openai_compat(
    generator: Generator | None = None,
    faults: Sequence[Fault] = (),
    *,
    api_key: str | None = None,
    latency_s: float = 0.0,
    port: int = 0,
    model_name: str = "local-teacher",
) -> Iterator[CompatServer]:
    """Run the server in a background thread on 127.0.0.1 (a free port by default) for the `with` block."""
    server = CompatServer(generator or ScriptedGenerator(), faults, api_key, latency_s, model_name)
    httpd = _Server(("127.0.0.1", port), _make_handler(server))
    server._httpd = httpd
    server.root_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    server.url = server.root_url + "/v1"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="openai-compat-server"
    )
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m omniopd_verl.serving.openai_compat --model smollm2-135m-instruct --port 8000`: serve a CPU teacher."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", required=True, help="local model folder or 'smollm2-135m-instruct'")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--served-model-name", default="local-teacher")
    args = parser.parse_args(argv)
    generator = TransformersGenerator(args.model, device=args.device)
    with serve_openai_compat(generator=generator, port=args.port, model_name=args.served_model_name) as server:
        print(f"serving {args.model} at {server.url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
