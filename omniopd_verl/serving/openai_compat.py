"""A small real HTTP teacher server on 127.0.0.1: OpenAI chat, OpenAI completions, Anthropic messages.

Serves a local CPU teacher to any OpenAI-compatible client (`omniopd-verl` or otherwise):

    python -m omniopd_verl.serving.openai_compat --model smollm2-135m-instruct --port 8000

or from Python, for the `with` block:

    with serve_openai_compat(generator=TransformersGenerator("smollm2-135m-instruct"), api_key=None) as server:
        server.url              # "http://127.0.0.1:<port>/v1"  (pass as TeacherConfig.api_base)
        server.root_url         # "http://127.0.0.1:<port>"  (Anthropic clients append /v1/messages themselves)
        server.calls(path)      # how many requests reached `path` ("/v1/completions", ...)

Endpoints: POST /v1/completions (prompt: str or list of str, n, max_tokens, temperature, top_p, seed),
POST /v1/chat/completions (messages, n, max_tokens | max_completion_tokens, ...), POST /v1/messages
(Anthropic: messages, system, max_tokens; one sample per call, a trailing assistant message is a
prefill to continue), GET /v1/models (with the served weights' `weights_digest`, which teacher caches key
by), GET /health (`{"status": "ok", "model": ...}`). Paths also work without the /v1
prefix. At start-up `main` prints the model id and base URL to pass to `omniopd-verl audit`.

Generators (`generator=`) implement `generate(call: GenerationCall) -> list[str]` (exactly call.n texts);
`TransformersGenerator` is a local causal LM (a path or "smollm2-135m-instruct") through the
`transformers` teacher's batched sampler; chat requests are rendered with the model's chat template.

Test tools live apart, in `omniopd_verl.testing`: the fault-injecting server (a `CompatServer`
subclass that overrides `reply`) and the model-free `ScriptedGenerator`.

Hardening (issue 22): every bad request gets a 4xx with a one-line JSON reason naming the key, the
value and what is allowed (`requests.parse_call`); n, max_tokens, the number of prompts and the body
size are capped (`Limits`, flags below) and prompt tokens + max_tokens must fit the model's context;
a client gets `request_timeout_s` to send a whole request (slow-loris connections are cut, and at most
`max_connections` are served at once, the rest get 503); a request whose client has gone is dropped
before its generation starts; requests from web pages are refused (any `Origin` header, any body that
is not `Content-Type: application/json`, which is what a page can send without a CORS preflight); and
with an API key (`--api-key`, or $OMNIOPD_SERVER_API_KEY) every request must carry it (Bearer, or
x-api-key on the Anthropic route), compared in constant time and never logged or echoed.

Why the standard library's ThreadingHTTPServer and not uvicorn/FastAPI (both installed with verl):
generation is one blocking CPU call under a lock, so an event loop buys no throughput; the limits that
matter here (a deadline for a whole request, a connection cap, 4xx reasons in OpenAI's and Anthropic's
error shapes) had to be written for either; and the fault-injecting test server
(`omniopd_verl.testing.fault_server`) works at the socket level (hang, disconnect, raw malformed
bodies) on this class. The stdlib parser is not hardened for the open internet: to expose the server
beyond one machine, put a TLS reverse proxy in front and set an API key.

The server keeps no request: it counts them per endpoint (`calls`, a few counters however long it runs).
While a request is handled, its `ReceivedRequest` holds the headers without any credential (the key sent
only as `key_sha256`), and the server never logs headers. The test server that also keeps the requests
it answered is `omniopd_verl.testing.RecordingServer`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from omniopd_verl.runtime.models import resolve_model_path
from omniopd_verl.serving.requests import BadRequest, GenerationCall, Limits, parse_call
from omniopd_verl.teachers.identity import weights_digest

__all__ = ["GenerationCall", "Limits", "BadRequest", "CompatServer", "Reply", "serve_openai_compat", "run_server"]
API_KEY_ENV = "OMNIOPD_SERVER_API_KEY"


class Generator(Protocol):
    """Makes exactly call.n texts. Optional: `context_error(call) -> str | None` (the call does not fit the
    model's context) and `lock` (held while generating: the server checks the client is still there
    after acquiring it, so queued requests of departed clients are never computed)."""

    def generate(self, call: GenerationCall) -> list[str]: ...


class ClientGone(Exception):
    """The client closed its connection before its generation started."""


# headers that carry a credential: never kept in a ReceivedRequest (the key sent is kept as its sha256 only)
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "proxy-authorization", "cookie")
# the endpoints `calls` counts one by one; every other path is counted under "other" (a bounded set)
COUNTED_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/messages", "/v1/models", "/v1/health")


def key_digest(key: str) -> str:
    """sha256 hex of an API key: what a ReceivedRequest keeps of the key that was sent."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class ReceivedRequest:
    """One request while it is handled: path, headers (lower-cased, credentials removed), body, status."""

    path: str
    headers: dict[str, str]
    body: Any
    status: int = 0
    time: float = field(default_factory=time.monotonic)
    client_gone: Callable[[], bool] | None = field(default=None, repr=False, compare=False)
    key_sha256: str | None = None  # key_digest of the key sent (Authorization: Bearer or x-api-key), if any
    client: tuple[str, int] | None = None  # the caller's (host, port): tests find the process behind a request

    @classmethod
    def from_headers(cls, path: str, headers: Any, body: Any = None, **kwargs: Any) -> ReceivedRequest:
        lower = {k.lower(): v for k, v in headers.items()}
        sent = sent_key(lower)
        kept = {k: v for k, v in lower.items() if k not in CREDENTIAL_HEADERS}
        return cls(path, kept, body, key_sha256=key_digest(sent) if sent else None, **kwargs)


class TransformersGenerator:
    """A local causal LM behind the server (CPU teacher). Generation is serialised by `lock`."""

    def __init__(self, model: str, *, device: str = "cpu"):
        from omniopd_verl.teachers.transformers_local import LocalSampler

        self.sampler = LocalSampler.load(model, device=device)
        # reported in GET /v1/models: clients key their caches by it (teachers/identity.py)
        self.weights_digest = weights_digest(resolve_model_path(model))
        self.lock = threading.RLock()  # re-entrant: the server holds it around generate()
        config = self.sampler.model.config
        self.context_window = int(getattr(config, "max_position_embeddings", 0) or 2048)

    def _prompt(self, call: GenerationCall) -> str:
        return call.prompt if call.prompt is not None else self.sampler.render_chat(call.messages or [])

    def context_error(self, call: GenerationCall) -> str | None:
        """Why the call cannot fit the model's context (prompt tokens + max_tokens), or None. Counted with
        the model's tokenizer; the body-size cap bounds what is tokenized."""
        prompts = call.prompt if isinstance(call.prompt, list) else [self._prompt(call)]
        for prompt in prompts:
            tokens = len(self.sampler.tokenizer(prompt, add_special_tokens=True)["input_ids"])
            if tokens == 0:  # nothing to condition on: the sampler cannot start
                return f"prompt={prompt!r} is invalid: allowed a prompt of at least one token"
            if tokens + call.max_tokens > self.context_window:
                return (
                    f"this model's context is {self.context_window} tokens; the request needs {tokens + call.max_tokens}"
                    f" ({tokens} in the prompt, max_tokens={call.max_tokens}): allowed prompt tokens + max_tokens"
                    f" <= {self.context_window}"
                )
        return None

    def generate(self, call: GenerationCall) -> list[str]:
        prompt = self._prompt(call)
        with self.lock:
            return self.sampler.sample(
                [prompt],
                n=call.n,
                max_new_tokens=call.max_tokens,
                temperature=call.temperature,
                top_p=call.top_p,
                seed=call.seed if call.seed is not None else 0,
            )[0]


@dataclass
class Reply:
    """What the handler sends for one POST: a JSON payload (or raw bytes), or nothing (`disconnect`)."""

    status: int
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    disconnect: bool = False


class CompatServer:
    """A running server: `url`, `calls(path)`. `reply` turns one parsed request into a Reply."""

    record_class = ReceivedRequest  # what the handler builds per request (the fault server's also has `fault`)

    def __init__(
        self,
        generator: Generator,
        api_key: str | None,
        model_name: str,
        *,
        limits: Limits | None = None,
        request_timeout_s: float = 30.0,
        max_connections: int = 64,
    ):
        self.generator = generator
        self.api_key = api_key or None
        self.model_name = model_name
        self.weights_digest: str | None = getattr(generator, "weights_digest", None)
        self.limits = limits or Limits()
        self.request_timeout_s = request_timeout_s
        self.max_connections = max_connections
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self.url = ""
        self.root_url = ""

    def calls(self, path: str | None = None) -> int:
        """Requests received, to `path` (one of COUNTED_PATHS, or "other") or in all."""
        with self._lock:
            return sum(self._counts.values()) if path is None else self._counts.get(path, 0)

    def _record(self, record: ReceivedRequest) -> None:
        key = record.path if record.path in COUNTED_PATHS else "other"
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def generate(
        self, call: GenerationCall, client_gone: Callable[[], bool] | None = None
    ) -> list[tuple[Any, list[str]]]:
        """(prompt, exactly call.n texts) for each prompt of the call (a completions call may carry several).
        Raises ClientGone, before any work it has not started, once `client_gone()` says so."""
        prompts = call.prompt if isinstance(call.prompt, list) else [call.prompt]
        groups = []
        for prompt in prompts:
            one = GenerationCall(**{**call.__dict__, "prompt": prompt})
            with getattr(self.generator, "lock", None) or contextlib.nullcontext():
                if client_gone is not None and client_gone():
                    raise ClientGone
                texts = self.generator.generate(one)
            if len(texts) != call.n:
                raise RuntimeError(f"generator returned {len(texts)} texts, asked for {call.n}")
            groups.append((prompt, texts))
        return groups

    def authorize(self, path: str, headers: dict[str, str]) -> Reply | None:
        """None if the request may proceed; else the 401 to send (when the server has an api_key)."""
        if self.api_key is None:
            return None
        sent = sent_key(headers)
        if sent and hmac.compare_digest(sent.encode(), self.api_key.encode()):
            return None
        how = "x-api-key: <key>" if path == "/v1/messages" else "Authorization: Bearer <key>"
        message = f"{'invalid' if sent else 'missing'} API key: this server requires {how}"
        return Reply(401, error_body(path == "/v1/messages", "authentication_error", message))

    def check(self, call: GenerationCall) -> None:
        """Refuse a call the model cannot serve (raises BadRequest)."""
        context_error = getattr(self.generator, "context_error", None)
        reason = context_error(call) if context_error is not None else None
        if reason:
            raise BadRequest(reason)

    def reply(self, path: str, call: GenerationCall, record: ReceivedRequest) -> Reply:
        """The answer to one valid, authorised request (the fault server overrides this)."""
        return Reply(200, build_response(path, call, self.generate(call, record.client_gone), self.model_name))


def sent_key(headers: dict[str, str]) -> str:
    """The API key a request carries (x-api-key, or Authorization: Bearer)."""
    return headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()


def _canonical(path: str) -> str:
    path = path.split("?", 1)[0].rstrip("/")
    while path.startswith("/v1/v1/"):  # clients that append /v1/... to a base URL that already ends in /v1
        path = path[3:]
    return path if path.startswith("/v1/") else "/v1" + path


def _client_gone(sock: socket.socket) -> bool:
    """True if the peer closed the connection (readable with nothing to read). A pipelined next request
    makes the socket readable too, with data: that client is still there."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _make_handler(server: CompatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real API servers do
        timeout = server.request_timeout_s  # each socket read; the whole request has a deadline too

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # never print requests (their headers carry API keys)

        def handle_one_request(self) -> None:
            # The reading deadline covers the request line, headers and body (a client dripping one byte
            # per read never trips the per-read timeout); it also bounds an idle keep-alive connection.
            self.server.start_reading(self.connection)
            try:
                super().handle_one_request()
            except (TimeoutError, ConnectionError):
                self.close_connection = True
            finally:
                self.server.stop_reading(self.connection)

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None, raw: bytes | None = None):
            body = raw if raw is not None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (hang fault)
                pass

        def _refuse(self, record: ReceivedRequest, status: int, kind: str, message: str, close: bool = False):
            """A 4xx/5xx with a one-line reason; `close` when the request body may be left unread."""
            record.status = status
            self.close_connection = self.close_connection or close
            return self._send(status, error_body(record.path == "/v1/messages", kind, message))

        def _web_page(self, record: ReceivedRequest) -> bool:
            """Refuse what a browser page can send: anything with an Origin header."""
            origin = self.headers.get("Origin")
            if origin is None:
                return False
            self._refuse(record, 403, "permission_error", f"cross-origin request refused (Origin: {origin[:100]})")
            return True

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            self.server.stop_reading(self.connection)
            path = _canonical(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            record = server.record_class.from_headers(path, headers, status=200)
            server._record(record)
            if self._web_page(record):
                return None
            denied = server.authorize(path, headers)
            if denied is not None:
                record.status = denied.status
                return self._send(denied.status, denied.payload, denied.headers)
            if path == "/v1/models":
                digest = {"weights_digest": server.weights_digest} if server.weights_digest else {}
                self._send(200, {"object": "list", "data": [{"id": server.model_name, "object": "model", **digest}]})
            elif path == "/v1/health":  # GET /health (or /v1/health): up, and which model id to ask for
                self._send(200, {"status": "ok", "model": server.model_name})
            else:
                self._refuse(record, 404, "not_found_error", f"unknown path {path}")
            return None

        def do_OPTIONS(self) -> None:  # noqa: N802 - a CORS preflight: no CORS headers, so browsers stop here
            self.server.stop_reading(self.connection)
            record = server.record_class.from_headers(_canonical(self.path), self.headers)
            server._record(record)
            self._refuse(record, 403, "permission_error", "cross-origin requests are refused", close=True)

        def _read_body(self, record: ReceivedRequest) -> bytes | None:
            """The body, or None after refusing the request (bad Content-Length/Type, too large)."""
            if self.headers.get("Transfer-Encoding"):
                self._refuse(
                    record,
                    411,
                    "invalid_request_error",
                    "Transfer-Encoding is not supported: send Content-Length",
                    True,
                )
                return None
            kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if kind != "application/json":
                message = f"Content-Type={kind or None!r} is invalid: allowed 'application/json'"
                self._refuse(record, 415, "invalid_request_error", message, True)
                return None
            text = self.headers.get("Content-Length")
            if text is None:
                self._refuse(record, 411, "invalid_request_error", "Content-Length is required", True)
                return None
            if not text.strip().isdigit():
                message = f"Content-Length={text[:40]!r} is invalid: allowed a non-negative integer"
                self._refuse(record, 400, "invalid_request_error", message, True)
                return None
            length, cap = int(text), server.limits.max_body_bytes
            if length > cap:
                message = f"Content-Length={length} is too large: allowed at most {cap} bytes (--max-body-bytes)"
                self._refuse(record, 413, "invalid_request_error", message, True)
                return None
            raw = self.rfile.read(length) if length else b""
            if len(raw) < length:
                self.close_connection = True  # the client stopped sending; nobody is left to answer
                return None
            self.server.stop_reading(self.connection)
            return raw

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            path = _canonical(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            record = server.record_class.from_headers(
                path, headers, client_gone=lambda: _client_gone(self.connection), client=self.client_address[:2]
            )
            server._record(record)
            if self._web_page(record):
                self.close_connection = True
                return None
            denied = server.authorize(path, headers)
            if denied is not None:
                record.status = denied.status
                self.close_connection = True  # the body stays unread
                return self._send(denied.status, denied.payload, denied.headers)
            raw = self._read_body(record)
            if raw is None:
                return None
            try:
                body = json.loads(raw or b"{}")
                record.body = body
            except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or nested too deeply
                reason = str(exc).splitlines()[0][:120] if isinstance(exc, ValueError) else "nested too deeply"
                return self._refuse(record, 400, "invalid_request_error", f"request body is not JSON: {reason}")
            try:
                call = parse_call(path, body, server.limits)
                if call is not None:
                    server.check(call)
            except BadRequest as exc:
                return self._refuse(record, exc.status, "invalid_request_error", str(exc))
            if call is None:
                return self._refuse(record, 404, "not_found_error", f"unknown path {path}")
            try:
                reply = server.reply(path, call, record)
            except ClientGone:
                record.status = -1
                self.close_connection = True
                return None
            except Exception as exc:  # noqa: BLE001 - one line to the client, never a traceback
                return self._refuse(record, 500, "api_error", f"generation failed: {type(exc).__name__}")
            record.status = -1 if reply.disconnect else reply.status
            if reply.disconnect:
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass
                return None
            self._send(reply.status, reply.payload, reply.headers, raw=reply.raw)
            return None

    return Handler


def error_body(anthropic: bool, kind: str, message: str) -> dict[str, Any]:
    if anthropic:
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": kind, "code": None}}


def _count_words(text: str) -> int:
    return len(text.split())


def build_response(
    path: str,
    call: GenerationCall,
    groups: list[tuple[Any, list[str]]],
    model: str,
    finish_reasons: list[list[str]] | None = None,
    count: Callable[[str], int] | None = None,
) -> dict[str, Any]:
    """The endpoint's JSON body for the generated texts. `finish_reasons` (per group, per text: "stop" or
    "length") overrides the default: "length" when a text has max_tokens words, else "stop". `count`: how
    the usage counts a text (default: words; a test server that bills like a provider passes a tokenizer's)."""
    _usage_words = count or _count_words
    prompt_tokens = sum(_usage_words(p if p is not None else json.dumps(call.messages)) for p, _ in groups)
    completion_tokens = sum(_usage_words(t) for _, texts in groups for t in texts)
    created = int(time.time())
    rid = hashlib.sha256(f"{time.monotonic_ns()}".encode()).hexdigest()[:16]

    def finish(g: int, i: int, text: str) -> str:
        if finish_reasons is not None:
            return finish_reasons[g][i]
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
            "stop_reason": "max_tokens" if finish(0, 0, text) == "length" else "end_turn",
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
            {
                "index": i,
                "message": {"role": "assistant", "content": t},
                "finish_reason": finish(0, i, t),
                "logprobs": None,
            }
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
    for g, (_, texts) in enumerate(groups):
        for i, t in enumerate(texts):
            choices.append({"index": len(choices), "text": t, "logprobs": None, "finish_reason": finish(g, i, t)})
    return {
        "id": f"cmpl-{rid}",
        "object": "text_completion",
        "created": created,
        "model": call.model or model,
        "choices": choices,
        "usage": usage,
    }


class _Server(ThreadingHTTPServer):
    """Threads bounded by a connection cap; a reaper cuts connections that take too long to send a request."""

    daemon_threads = True  # hung handlers (a slow generator, the hang fault) must not block shutdown
    request_queue_size = 1024  # the default listen backlog of 5 resets connections under concurrent load

    def __init__(self, address: tuple[str, int], handler: type, compat: CompatServer):
        super().__init__(address, handler)
        self.compat = compat
        self._reading: dict[socket.socket, float] = {}  # connection -> deadline for its current request
        self._active = 0
        self._state = threading.Lock()
        self._stopped = threading.Event()
        self._reaper = threading.Thread(target=self._reap, daemon=True, name="openai-compat-reaper")
        self._reaper.start()

    def start_reading(self, conn: socket.socket) -> None:
        with self._state:
            self._reading[conn] = time.monotonic() + self.compat.request_timeout_s

    def stop_reading(self, conn: socket.socket) -> None:
        with self._state:
            self._reading.pop(conn, None)

    def _reap(self) -> None:
        tick = min(0.25, self.compat.request_timeout_s / 4)
        while not self._stopped.wait(tick):
            now = time.monotonic()
            with self._state:
                late = [conn for conn, deadline in self._reading.items() if deadline < now]
                for conn in late:
                    del self._reading[conn]
            for conn in late:  # unblocks the handler's read: it sees EOF or an error and ends
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        with self._state:
            full = self._active >= self.compat.max_connections
            if not full:
                self._active += 1
        if full:  # answer without a thread: a short 503, then close
            body = json.dumps(error_body(False, "overloaded_error", "too many connections; retry later")).encode()
            head = f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(head.encode() + b"\r\nRetry-After: 1\r\nConnection: close\r\n\r\n" + body)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.stop_reading(request)
            with self._state:
                self._active -= 1

    def server_close(self) -> None:
        self._stopped.set()
        super().server_close()


@contextmanager
def run_server(server: CompatServer, port: int = 0, host: str = "127.0.0.1") -> Iterator[CompatServer]:
    """Serve `server` in a background thread on `host` (127.0.0.1; a free port by default) for the `with` block."""
    httpd = _Server((host, port), _make_handler(server), server)
    server._httpd = httpd
    shown = f"[{host}]" if ":" in host else host
    server.root_url = f"http://{shown}:{httpd.server_address[1]}"
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


@contextmanager
def serve_openai_compat(
    generator: Generator,
    *,
    api_key: str | None = None,
    port: int = 0,
    host: str = "127.0.0.1",
    model_name: str = "local-teacher",
    limits: Limits | None = None,
    request_timeout_s: float = 30.0,
    max_connections: int = 64,
    server_class: type[CompatServer] | None = None,
) -> Iterator[CompatServer]:
    """Run a teacher server for `generator` on `host` (127.0.0.1) for the `with` block. `server_class`: a
    CompatServer subclass to run instead (the test tools' RecordingServer keeps the requests)."""
    server = (server_class or CompatServer)(
        generator,
        api_key,
        model_name,
        limits=limits,
        request_timeout_s=request_timeout_s,
        max_connections=max_connections,
    )
    with run_server(server, port, host) as running:
        yield running


def _positive(kind: type):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise ValueError
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m omniopd_verl.serving.openai_compat --model smollm2-135m-instruct --port 8000`: serve a CPU teacher."""
    import argparse

    defaults = Limits()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", required=True, help="local model folder or 'smollm2-135m-instruct'")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; beyond it, set an API key)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--served-model-name", default="local-teacher")
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"require this key on every request (default: ${API_KEY_ENV}; prefer the variable: "
        "a command line is visible to other users in ps)",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-n", type=_positive(int), default=defaults.max_n, help="samples per prompt")
    limits.add_argument(
        "--max-tokens",
        type=_positive(int),
        default=defaults.max_tokens,
        help="new tokens per sample (prompt tokens + max_tokens must also fit the model's context)",
    )
    limits.add_argument("--max-prompts", type=_positive(int), default=defaults.max_prompts, help="prompts per request")
    limits.add_argument("--max-body-bytes", type=_positive(int), default=defaults.max_body_bytes)
    limits.add_argument(
        "--request-timeout", type=_positive(float), default=30.0, help="seconds a client has to send one request"
    )
    limits.add_argument(
        "--max-connections", type=_positive(int), default=64, help="connections served at once; more get 503"
    )
    args = parser.parse_args(argv)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    print(f"loading {args.model} on {args.device} ...", flush=True)
    generator = TransformersGenerator(args.model, device=args.device)
    caps = Limits(args.max_n, args.max_tokens, args.max_prompts, args.max_body_bytes)
    with serve_openai_compat(
        generator=generator,
        api_key=api_key,
        port=args.port,
        host=args.host,
        model_name=args.served_model_name,
        limits=caps,
        request_timeout_s=args.request_timeout,
        max_connections=args.max_connections,
    ) as server:
        key_note = f"an API key is required (from --api-key or ${API_KEY_ENV})" if api_key else "no API key required"
        print(
            f"serving {args.model} as model id {args.served_model_name!r} at {server.url} "
            f"(health check: GET {server.root_url}/health)\n"
            f"  context {generator.context_window} tokens; caps: n <= {caps.max_n}, max_tokens <= {caps.max_tokens}, "
            f"{caps.max_prompts} prompts and {caps.max_body_bytes} bytes per request; {key_note}\n"
            f"  use it with: omniopd-verl audit --teacher openai_completions --teacher-model {args.served_model_name} "
            f"--teacher-api-base {server.url} ...\n"
            "  (Ctrl-C to stop)",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
