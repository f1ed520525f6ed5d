"""The teacher server with injected faults, and a deterministic generator: for tests and benchmarks.

    from omniopd_verl.testing import Fault, ScriptedGenerator, serve_fault_server

    with serve_fault_server(generator=ScriptedGenerator(), faults=[Fault("rate_limit", retry_after=1)],
                            api_key="sk-test", latency_s=0.0) as server:
        server.url, server.root_url, server.requests, server.calls(path)   # as serving.openai_compat

It is the real HTTP server of `omniopd_verl.serving.openai_compat` (same wire formats, same socket
handling) with `reply` overridden. Faults (`faults=`) are consumed in order, each by `times` matching
requests (`match`: a substring of the request's prompt/messages JSON, `path`: only that endpoint); a
request no fault matches is served normally. Kinds:
- "rate_limit" (429 + Retry-After), "server_error" (500), "disconnect" (close the socket unanswered);
- "bad_request" (400 with `message`, e.g. a parameter the model rejects);
- "hang" (sleep `hang_s`, then answer, normally after the client gave up);
- "malformed" (200 with a body that is not JSON), "bad_schema" (200 JSON without choices);
- "short" (fewer choices than asked: `choices`, default n - 1);
- "empty_length" (200 whose sample `sample` has text "" and finish reason "length": malformed, the
  length limit was hit yet nothing came back), "empty_stop" (text "" with finish reason "stop": the
  teacher's real answer "end here"). Anthropic: stop_reason "max_tokens" / "end_turn";
- "no_usage" (a normal answer without its `usage` block), "bad_usage" (usage counts of -1000000),
  "surrogate" (every sample's text ends in a lone surrogate, "\\ud800" in the JSON).
`latency_s` adds a fixed delay to every answered request (benchmarks). A request with a wrong key gets
401 with the sent key echoed in the message, as OpenAI's API does (so tests can catch a client leaking it).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from omniopd_verl.serving.openai_compat import (
    CompatServer,
    GenerationCall,
    Generator,
    ReceivedRequest,
    Reply,
    build_response,
    error_body,
    run_server,
    sent_key,
    serve_openai_compat,
)

FAULT_KINDS = (
    "rate_limit",
    "server_error",
    "hang",
    "malformed",
    "bad_schema",
    "short",
    "disconnect",
    "empty_length",
    "empty_stop",
    "no_usage",
    "bad_usage",
    "surrogate",
    "bad_request",
)


@dataclass
class Fault:
    kind: str
    times: int = 1
    match: str | None = None  # substring of the request's prompt / messages JSON
    path: str | None = None  # e.g. "/v1/completions"
    retry_after: float | None = None  # rate_limit: the Retry-After header value, seconds
    hang_s: float = 30.0  # hang: how long to sleep before answering
    choices: int | None = None  # short: how many choices to return (default n - 1)
    sample: int = 0  # empty_length / empty_stop: which sample of the answer comes back empty
    message: str = "bad request (injected)"  # bad_request: the 400's error message

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"Fault.kind={self.kind!r} is invalid: allowed one of {list(FAULT_KINDS)}")
        if self.times < 1:
            raise ValueError(f"Fault.times={self.times!r} is invalid: allowed an integer >= 1")


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


class RecordingServer(CompatServer):
    """The real server that also keeps the requests it received (`requests`, the last MAX_RECORDED, in order),
    for tests: path, headers without credentials, body, status, time, `key_sha256` of the key sent
    (compare with `key_digest(KEY)`). The runtime server keeps none."""

    MAX_RECORDED = 10_000

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.requests: list[ReceivedRequest] = []

    def _record(self, record: ReceivedRequest) -> None:
        super()._record(record)
        with self._lock:
            self.requests.append(record)
            if len(self.requests) > self.MAX_RECORDED:
                del self.requests[: len(self.requests) - self.MAX_RECORDED]


@dataclass
class FaultRecord(ReceivedRequest):
    """A recorded request of the fault server: also the fault it got (None: served normally)."""

    fault: str | None = None


class FaultServer(RecordingServer):
    """CompatServer whose `reply` applies the queued faults (and that keeps its requests, RecordingServer)."""

    record_class = FaultRecord

    def __init__(
        self,
        generator: Generator,
        faults: Sequence[Fault],
        api_key: str | None,
        latency_s: float,
        model_name: str,
        count_tokens: Callable[[str], int] | None = None,
        max_connections: int = 64,
    ):
        super().__init__(generator, api_key, model_name, max_connections=max_connections)
        self.count_tokens = count_tokens  # the usage's counter (None: words)
        self.faults = [dict(fault=f, left=f.times) for f in faults]
        self.latency_s = latency_s
        self._fault_lock = threading.Lock()
        self.in_flight = 0  # requests inside reply() now, and the most there ever were (concurrency checks)
        self.max_in_flight = 0

    def add_faults(self, faults: Sequence[Fault]) -> None:
        with self._fault_lock:
            self.faults.extend(dict(fault=f, left=f.times) for f in faults)

    def faults_left(self) -> int:
        with self._fault_lock:
            return sum(entry["left"] for entry in self.faults)

    def _take_fault(self, path: str, content: str) -> Fault | None:
        with self._fault_lock:
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

    def authorize(self, path: str, headers: dict[str, str]) -> Reply | None:
        """As the real server, but the 401 echoes the key that was sent, as OpenAI's does ("Incorrect API key
        provided: sk-..."): a client that prints server errors verbatim would leak it, which tests must catch."""
        denied = super().authorize(path, headers)
        if denied is None:
            return None
        message = f"Incorrect API key provided: {sent_key(headers)}. You can find your API key in your account."
        return Reply(401, error_body(path == "/v1/messages", "authentication_error", message))

    def reply(self, path: str, call: GenerationCall, record: ReceivedRequest) -> Reply:
        with self._fault_lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return self._reply(path, call, record)
        finally:
            with self._fault_lock:
                self.in_flight -= 1

    def _reply(self, path: str, call: GenerationCall, record: ReceivedRequest) -> Reply:
        anthropic = path == "/v1/messages"
        content = call.prompt if call.prompt is not None else json.dumps(call.messages)
        fault = self._take_fault(path, content if isinstance(content, str) else json.dumps(content))
        record.fault = fault.kind if fault else None
        kind = fault.kind if fault else None
        if kind == "disconnect":
            return Reply(0, disconnect=True)
        if kind == "rate_limit":
            extra = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            return Reply(429, error_body(anthropic, "rate_limit_error", "rate limited (injected)"), extra)
        if kind == "server_error":
            return Reply(500, error_body(anthropic, "api_error", "internal error (injected)"))
        if kind == "bad_request":
            return Reply(400, error_body(anthropic, "invalid_request_error", fault.message))
        if kind == "hang":
            time.sleep(fault.hang_s)
        if self.latency_s:
            time.sleep(self.latency_s)
        if kind == "malformed":
            return Reply(200, raw=b'{"choices": [ this is not json')
        if kind == "bad_schema":
            return Reply(200, {"id": "x", "object": "unexpected"})
        groups = self.generate(call)
        finish = None
        if kind == "short":
            keep = fault.choices if fault.choices is not None else max(0, call.n - 1)
            groups = [(p, texts[:keep]) for p, texts in groups]
        if kind in ("empty_length", "empty_stop"):
            reason = "length" if kind == "empty_length" else "stop"
            finish = []
            for g, (_, texts) in enumerate(groups):
                finish.append(["length" if len(t.split()) >= call.max_tokens else "stop" for t in texts])
                j = min(fault.sample, len(texts) - 1)
                texts[j] = ""
                finish[g][j] = reason
        payload = build_response(path, call, groups, self.model_name, finish, count=self.count_tokens)
        if kind == "no_usage":
            payload.pop("usage", None)
        if kind == "bad_usage":
            payload["usage"] = {k: -1_000_000 for k in payload["usage"]}
        if kind == "surrogate":
            for choice in payload.get("choices", []):  # chat: message.content; completions: text
                holder = choice.get("message", choice)
                key = "content" if "message" in choice else "text"
                holder[key] += "\ud800"
            for block in payload.get("content", []):  # Anthropic
                block["text"] += "\ud800"
        return Reply(200, payload)


@contextmanager
def serve_fault_server(
    generator: Generator | None = None,
    faults: Sequence[Fault] = (),
    *,
    api_key: str | None = None,
    latency_s: float = 0.0,
    port: int = 0,
    model_name: str = "local-teacher",
    count_tokens: Callable[[str], int] | None = None,
    max_connections: int = 64,
) -> Iterator[FaultServer]:
    """Run the fault server (ScriptedGenerator by default) on 127.0.0.1 for the `with` block.
    `count_tokens`: what its usage counts per text (default: words; e.g. a tokenizer's count, to bill as
    a provider does). `max_connections`: served at once, the rest get 503 (a benchmark at concurrency 512
    needs more than the default 64)."""
    server = FaultServer(
        generator or ScriptedGenerator(), faults, api_key, latency_s, model_name, count_tokens, max_connections
    )
    with run_server(server, port) as running:
        yield running


@contextmanager
def serve_recording_server(generator: Generator, **settings: Any) -> Iterator[RecordingServer]:
    """`serving.openai_compat.serve_openai_compat` (same settings), keeping the requests (`server.requests`)."""
    with serve_openai_compat(generator, server_class=RecordingServer, **settings) as server:
        yield server
