"""What a request to the teacher server may ask for: parse a JSON body into a `GenerationCall`, or refuse it.

Every refusal is a `BadRequest` with one line naming the key, the value and what is allowed, which the
server sends as a 4xx. Nothing the client sends reaches the generator unchecked: wrong JSON shapes,
booleans posing as numbers, NaN/inf, out-of-range sampling values, empty prompts, and requests beyond
the server's caps (`Limits`) are all refused here. Keys the server does not use (`stop`, `user`, ...)
are ignored, as OpenAI-compatible servers do, except `stream: true`, which it cannot honour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "developer", "user", "assistant")


@dataclass
class GenerationCall:
    """What one HTTP request asks the generator for."""

    endpoint: str  # "completions" | "chat" | "messages"
    prompt: str | list[str] | None  # raw prefix(es) (completions)
    messages: list[dict[str, Any]] | None  # chat messages incl. a system message if any (chat, messages)
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    model: str | None


@dataclass(frozen=True)
class Limits:
    """Server-wide caps (flags of `python -m omniopd_verl.serving.openai_compat`). The model's context
    is checked by the generator on top of these (prompt tokens + max_tokens <= context)."""

    max_n: int = 16  # samples per prompt
    max_tokens: int = 1024  # new tokens per sample
    max_prompts: int = 64  # prompts in one completions request (a list prompt)
    max_body_bytes: int = 2 * 1024 * 1024  # request body; an 8k-token context is ~40 kB of text


class BadRequest(ValueError):
    """A request the server refuses; `status` is the HTTP status, the message is one line."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(body: dict, key: str, default: int | None, low: int, high: int) -> int:
    value = body.get(key)
    if value is None:
        if default is None:
            raise BadRequest(f"{key} is required: allowed an integer in [{low}, {high}]")
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{key}={_show(value)} is invalid: allowed an integer in [{low}, {high}]")
    return value


def _number(body: dict, key: str, default: float, low: float, high: float, *, open_low: bool = False) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low < value if open_low else low <= value) and value <= high
    if not ok:
        bracket = "(" if open_low else "["
        raise BadRequest(f"{key}={_show(value)} is invalid: allowed a finite number in {bracket}{low:g}, {high:g}]")
    return float(value)


def _text_of(content: Any, where: str) -> str:
    """A message's content: a string, or a list of content parts whose text parts are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("text", ""), str):
                raise BadRequest(
                    f"{where}.content[{i}]={_show(part)} is invalid: allowed {{'type': 'text', 'text': str}}"
                )
            texts.append(part.get("text", ""))
        return "".join(texts)
    raise BadRequest(f"{where}.content={_show(content)} is invalid: allowed a string or a list of text parts")


def _messages(body: dict, key: str = "messages") -> list[dict[str, str]]:
    messages = body.get(key)
    if not isinstance(messages, list) or not messages:
        raise BadRequest(f"{key}={_show(messages)} is invalid: allowed a non-empty list of messages")
    plain = []
    for i, message in enumerate(messages):
        where = f"{key}[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where}={_show(message)} is invalid: allowed an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(f"{where}.role={_show(role)} is invalid: allowed one of {list(ROLES)}")
        plain.append({"role": role, "content": _text_of(message.get("content", ""), where)})
    return plain


def _prompt(body: dict, limits: Limits) -> str | list[str]:
    """A string or a non-empty list of strings. An empty string is valid on the wire (OpenAI accepts it);
    a model that needs a token to start from refuses it in its `context_error`."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) > limits.max_prompts:
            raise BadRequest(f"prompt has {len(prompt)} prompts: allowed at most {limits.max_prompts} per request")
        return prompt
    raise BadRequest(f"prompt={_show(prompt)} is invalid: allowed a string or a non-empty list of strings")


def parse_call(path: str, body: Any, limits: Limits) -> GenerationCall | None:
    """The call `body` asks for on `path` (None for a path that is not a generation endpoint)."""
    if path not in ("/v1/completions", "/v1/chat/completions", "/v1/messages"):
        return None
    if not isinstance(body, dict):
        raise BadRequest(f"request body={_show(body)} is invalid: allowed a JSON object")
    if body.get("stream"):
        raise BadRequest(f"stream={_show(body['stream'])} is not supported: allowed false or absent")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"model={_show(model)} is invalid: allowed a string")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise BadRequest(f"seed={_show(seed)} is invalid: allowed an integer in [0, 2^63) or null")
    common = dict(
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, open_low=True),
        seed=seed,
        model=model,
    )
    if path == "/v1/messages":
        messages = _messages(body)
        system = body.get("system")
        if system:
            messages = [{"role": "system", "content": _text_of(system, "system")}, *messages]
        max_tokens = _int(body, "max_tokens", None, 1, limits.max_tokens)
        return GenerationCall("messages", None, messages, 1, max_tokens, **common)
    n = _int(body, "n", 1, 1, limits.max_n)
    if path == "/v1/completions":
        max_tokens = _int(body, "max_tokens", 16, 1, limits.max_tokens)
        return GenerationCall("completions", _prompt(body, limits), None, n, max_tokens, **common)
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _int(body, key, 16, 1, limits.max_tokens)
    return GenerationCall("chat", None, _messages(body), n, max_tokens, **common)
