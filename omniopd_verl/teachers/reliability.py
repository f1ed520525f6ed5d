"""Failure classification for teacher calls: which errors are retried, which stop the run, Retry-After.

Used by the teacher library (`library.Teacher`) for every plugin:
- retried: `TransientTeacherError` (a plugin's way to say "try again"), `UnusableAnswer` (a 200 answer
  that cannot be used: too few samples, non-text, an empty sample that did not end with a stop),
  timeouts, connection errors, HTTP 408/409/425/429 and 5xx (any exception carrying the status as
  `status_code` (openai, litellm), `status` (aiohttp) or `response.status_code` (httpx, requests));
- fatal (`TeacherAuthError`, the run stops): HTTP 401/403, since a wrong key would fail every request;
- a 400/422 naming a parameter the model does not support (`rejected_parameter`): stops the run at the
  first call, since every call would fail alike;
- anything else fails that request only (after no retry), e.g. other 400s, 404.
`parse_retry_after` reads a Retry-After header (seconds or an HTTP date); `import_litellm` imports
litellm offline-safe.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import os
import re
import time
from typing import Any

from omniopd_verl.errors import ConfigError, OmniOPDError

RETRYABLE_STATUS = {408, 409, 425, 429}
FATAL_STATUS = {401, 403}
RETRYABLE_NAME_WORDS = ("Timeout", "Connect", "Disconnect", "ServiceUnavailable", "InternalServer", "RateLimit")


class TeacherAuthError(OmniOPDError):
    """The teacher rejected the credentials (HTTP 401/403): every request would fail, so stop."""


class UnusableAnswer(Exception):
    """A 200 answer that cannot be used (too few samples, non-text, malformed): retried like a 5xx."""


class TransientTeacherError(Exception):
    """Raise from a plugin's raw call for a failure worth retrying (the library backs off and retries)."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        seconds = email.utils.mktime_tz(parsed) - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, as the common clients spell it: `.status_code` (openai,
    litellm, anthropic), `.status` (aiohttp's ClientResponseError), `.response.status_code` (httpx's
    HTTPStatusError, requests' HTTPError). Only an int from 100 to 599 counts."""
    response = getattr(exc, "response", None)
    for status in (
        getattr(exc, "status_code", None),
        getattr(exc, "status", None),
        getattr(response, "status_code", None),
    ):
        if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
            return status
    return None


def retry_after_of(exc: BaseException) -> float | None:
    for source in (getattr(exc, "response", None), exc):
        headers = getattr(source, "headers", None)
        if headers is not None:
            try:
                value = headers.get("retry-after") or headers.get("Retry-After")
            except AttributeError:
                value = None
            seconds = parse_retry_after(value)
            if seconds is not None:
                return seconds
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is not None:
        return parse_retry_after(headers.get("retry-after"))
    return None


def classify(exc: BaseException) -> str:
    """'retry', 'fatal' (stop the run) or 'fail' (no retry; this request fails)."""
    if isinstance(exc, (UnusableAnswer, TransientTeacherError, asyncio.TimeoutError, TimeoutError, ConnectionError)):
        return "retry"
    status = status_of(exc)
    if status in FATAL_STATUS:
        return "fatal"
    if status is not None and (status in RETRYABLE_STATUS or status >= 500):
        return "retry"
    name = type(exc).__name__
    # by name, for clients whose errors subclass neither TimeoutError nor ConnectionError (aiohttp's
    # ClientConnectorError and ServerDisconnectedError, httpx's ConnectError, openai's APIConnectionError)
    if any(word in name for word in RETRYABLE_NAME_WORDS):
        return "retry"
    if status is None and name in ("APIError", "JSONDecodeError"):
        return "retry"
    return "fail"


_QUOTED = r"['\"`]?([A-Za-z_][A-Za-z0-9_.]*)['\"`]?"
_REJECTED_PARAMETER = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"unsupported (?:parameter|argument|value)s?:?\s*" + _QUOTED,  # OpenAI
        r"unrecognized request arguments? supplied:?\s*" + _QUOTED,
        r"unknown (?:parameter|argument|field)s?:?\s*" + _QUOTED,
        r"['\"`]([A-Za-z_][A-Za-z0-9_.]*)['\"`] (?:is|are) not (?:supported|allowed|permitted)",
        r"['\"`]([A-Za-z_][A-Za-z0-9_.]*)['\"`] (?:is|has been) deprecated",
        r"['\"`]([A-Za-z_][A-Za-z0-9_.]*)['\"`] and ['\"`][A-Za-z_.]+['\"`] cannot both be specified",  # Anthropic
        r"(?:parameter|argument) ['\"`]([A-Za-z_][A-Za-z0-9_.]*)['\"`] (?:is )?not supported",
    )
]


def rejected_parameter(exc: BaseException) -> str | None:
    """The parameter an HTTP 400/422 says the model does not accept (every call would fail alike), or None."""
    if status_of(exc) not in (400, 422):
        return None
    text = str(exc)
    for pattern in _REJECTED_PARAMETER:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def positive_option(options: dict[str, Any], key: str, default: float | None, *, zero_ok: bool = False) -> float | None:
    value = options.get(key, default)
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero_ok):
        allowed = "a finite number >= 0" if zero_ok else "a finite number > 0"
        raise ConfigError(f"omniopd.teacher.options.{key}={value!r} is invalid: allowed {allowed}")
    return float(value)


_LITELLM_READY = False


def import_litellm() -> Any:
    """Import litellm offline-safe: local price table, no debug banners on stdout."""
    global _LITELLM_READY
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    if not _LITELLM_READY:
        litellm.suppress_debug_info = True  # its "Give Feedback" banner goes to stdout on every error
        litellm.telemetry = False
        _LITELLM_READY = True
    return litellm
