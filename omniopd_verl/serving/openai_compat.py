"""A small real HTTP teacher server on 127.0.0.1: OpenAI chat, OpenAI completions, Anthropic messages.

Serves a local CPU teacher to any OpenAI-compatible client (`omniopd-verl` or otherwise):

    python -m omniopd_verl.serving.openai_compat --model smollm2-135m-instruct --port 8000

or from Python, for the `with` block:

    with serve_openai_compat(generator=TransformersGenerator("smollm2-135m-instruct"), api_key=None) as server:
        server.url              # "http://127.0.0.1:<port>/v1"  (pass as TeacherConfig.api_base)
        server.root_url         # "http://127.0.0.1:<port>"  (Anthropic clients append /v1/messages themselves)
        server.requests         # list[ReceivedRequest]: path, headers (lower-cased), body, status, fault
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

If `api_key` is set, requests without it (Bearer or x-api-key) get 401. The server never logs request
headers; it only records them in memory so tests can prove a key was sent (and nowhere else).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from omniopd_verl.models import resolve_model_path
from omniopd_verl.teachers.identity import weights_digest


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
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: Any
    status: int = 0
    fault: str | None = None
    time: float = field(default_factory=time.monotonic)


class TransformersGenerator:
    """A local causal LM behind the server (CPU teacher). Generation is serialised by a lock."""

    def __init__(self, model: str, *, device: str = "cpu"):
        from omniopd_verl.teachers.transformers_local import LocalSampler

        self.sampler = LocalSampler.load(model, device=device)
        self._lock = threading.Lock()
        # reported in GET /v1/models: clients key their caches by it (teachers/identity.py)
        self.weights_digest = weights_digest(resolve_model_path(model))

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


@dataclass
class Reply:
    """What the handler sends for one POST: a JSON payload (or raw bytes), or nothing (`disconnect`)."""

    status: int
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    disconnect: bool = False


class CompatServer:
    """A running server: `url` and the recorded `requests`. `reply` turns one parsed request into a Reply."""

    def __init__(self, generator: Generator, api_key: str | None, model_name: str):
        self.generator = generator
        self.api_key = api_key
        self.model_name = model_name
        self.weights_digest: str | None = getattr(generator, "weights_digest", None)
        self.requests: list[ReceivedRequest] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self.url = ""
        self.root_url = ""

    def calls(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if path is None or r.path == path)

    def _record(self, record: ReceivedRequest) -> None:
        with self._lock:
            self.requests.append(record)

    def generate(self, call: GenerationCall) -> list[tuple[Any, list[str]]]:
        """(prompt, exactly call.n texts) for each prompt of the call (a completions call may carry several)."""
        prompts = call.prompt if isinstance(call.prompt, list) else [call.prompt]
        groups = []
        for prompt in prompts:
            one = GenerationCall(**{**call.__dict__, "prompt": prompt})
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
        if sent == self.api_key:
            return None
        return Reply(401, error_body(path == "/v1/messages", "authentication_error", "invalid API key"))

    def reply(self, path: str, call: GenerationCall, record: ReceivedRequest) -> Reply:
        """The answer to one valid, authorised request (the fault server overrides this)."""
        return Reply(200, build_response(path, call, self.generate(call), self.model_name))


def sent_key(headers: dict[str, str]) -> str:
    """The API key a request carries (x-api-key, or Authorization: Bearer)."""
    return headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()


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
                digest = {"weights_digest": server.weights_digest} if server.weights_digest else {}
                self._send(200, {"object": "list", "data": [{"id": server.model_name, "object": "model", **digest}]})
            elif path == "/v1/health":  # GET /health (or /v1/health): up, and which model id to ask for
                self._send(200, {"status": "ok", "model": server.model_name})
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
                return self._send(400, error_body(anthropic, "invalid_request_error", "request body is not JSON"))
            denied = server.authorize(path, headers)
            if denied is not None:
                record.status = denied.status
                return self._send(denied.status, denied.payload, denied.headers)
            try:
                call = _parse_call(path, body)
            except (KeyError, TypeError, ValueError) as exc:
                record.status = 400
                return self._send(400, error_body(anthropic, "invalid_request_error", f"bad request: {exc}"))
            if call is None:
                record.status = 404
                return self._send(404, error_body(anthropic, "not_found_error", f"unknown path {path}"))
            reply = server.reply(path, call, record)
            record.status = -1 if reply.disconnect else reply.status
            if reply.disconnect:
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass
                return None
            self._send(reply.status, reply.payload, reply.headers, raw=reply.raw)

    return Handler


def error_body(anthropic: bool, kind: str, message: str) -> dict[str, Any]:
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


def build_response(
    path: str,
    call: GenerationCall,
    groups: list[tuple[Any, list[str]]],
    model: str,
    finish_reasons: list[list[str]] | None = None,
) -> dict[str, Any]:
    """The endpoint's JSON body for the generated texts. `finish_reasons` (per group, per text: "stop" or
    "length") overrides the default: "length" when a text has max_tokens words, else "stop"."""
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
    daemon_threads = True  # hung handlers (a slow generator, the hang fault) must not block shutdown
    request_queue_size = 1024  # the default listen backlog of 5 resets connections under concurrent load


@contextmanager
def run_server(server: CompatServer, port: int = 0) -> Iterator[CompatServer]:
    """Serve `server` in a background thread on 127.0.0.1 (a free port by default) for the `with` block."""
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


@contextmanager
def serve_openai_compat(
    generator: Generator, *, api_key: str | None = None, port: int = 0, model_name: str = "local-teacher"
) -> Iterator[CompatServer]:
    """Run a teacher server for `generator` on 127.0.0.1 for the `with` block."""
    with run_server(CompatServer(generator, api_key, model_name), port) as server:
        yield server


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m omniopd_verl.serving.openai_compat --model smollm2-135m-instruct --port 8000`: serve a CPU teacher."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", required=True, help="local model folder or 'smollm2-135m-instruct'")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--served-model-name", default="local-teacher")
    args = parser.parse_args(argv)
    print(f"loading {args.model} on {args.device} ...", flush=True)
    generator = TransformersGenerator(args.model, device=args.device)
    with serve_openai_compat(generator=generator, port=args.port, model_name=args.served_model_name) as server:
        print(
            f"serving {args.model} as model id {args.served_model_name!r} at {server.url} "
            f"(health check: GET {server.root_url}/health)\n"
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
