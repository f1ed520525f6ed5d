"""Dependable HTTP teacher calls: concurrency, rate limits, retries with backoff, timeouts, validation.

`ReliableTeacher` is the shared base of the HTTP backends (`litellm`, `openai_completions`). A backend
supplies `_plan(request) -> CallPlan` (what the teacher sees, for the cache key and token estimate) and
`_call(request, plan, unit) -> Answer` (one HTTP call through litellm); this module does the rest:

- cache: a request whose key is in the SQLite cache is answered without any HTTP call;
- units: a provider with `n` answers all N samples in one call (one unit); one without `n` gets N
  parallel single-sample calls (N units, seeds seed+j), and only failed units are retried, so samples
  that did arrive are never thrown away or paid twice;
- bounded concurrency (`max_concurrency` HTTP calls in flight, across all requests), client-side
  requests-per-minute and tokens-per-minute limits (aiolimiter's leaky buckets; the token estimate is
  prompt chars/4 + N x teacher_max_tokens);
- a per-call timeout (`timeout_s`, passed to litellm and enforced again with asyncio.wait_for);
- retries on 408/409/429/5xx, timeouts, connection errors and unusable answers (fewer than the asked
  samples, non-string texts, malformed bodies), with exponential backoff and jitter, honouring
  Retry-After (seconds or an HTTP date) when the server sends it; 400/404 and other client errors are
  not retried; 401/403 stop the run (a wrong key would otherwise fail every request);
- after the last retry the result has `texts=None` and `error` set (counted in teacher/failures); the
  Auditor then applies `on_failure`. A missing sample is never turned into a disagreement here;
- accounting and the hard budget (`accounting.TeacherMeter`): checked before every HTTP call.

The API key is read once from the environment and only handed to litellm; error texts are redacted
before they are logged or stored.

Options shared by the HTTP backends (`config.options`): backoff_base_s (0.5), backoff_max_s (30),
max_retry_after_s (60), input_cost_per_token / output_cost_per_token (override litellm's price table;
needed for a budget with models litellm does not price), max_tokens_factor (1.25: teacher tokens
requested per student-token-equivalent, then trimmed by the Auditor).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import os
import random
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omniopd_verl.config import TeacherConfig
from omniopd_verl.errors import ConfigError, OmniOPDError
from omniopd_verl.teachers.accounting import TeacherBudgetExceeded, TeacherMeter
from omniopd_verl.teachers.base import TeacherCapabilities, TeacherRequest, TeacherResult
from omniopd_verl.teachers.cache import TeacherCache, cache_key

log = logging.getLogger("omniopd_verl.teachers")

RETRYABLE_STATUS = {408, 409, 425, 429}
FATAL_STATUS = {401, 403}
SHARED_OPTIONS = (
    "backoff_base_s",
    "backoff_max_s",
    "max_retry_after_s",
    "input_cost_per_token",
    "output_cost_per_token",
    "max_tokens_factor",
)


class TeacherAuthError(OmniOPDError):
    """The teacher rejected the credentials (HTTP 401/403): every request would fail, so stop."""


class UnusableAnswer(Exception):
    """A 200 answer that cannot be used (too few samples, non-text, malformed): retried like a 5xx."""


@dataclass
class CallPlan:
    """What one request sends: `content` is everything the teacher sees (hashed into the cache key)."""

    content: Any
    teacher_max_tokens: int  # what the API is sent as max_tokens
    prompt_chars: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Unit:
    """One HTTP call's worth of samples: `n` samples starting at sample index `offset`, with `seed`."""

    offset: int
    n: int
    seed: int


@dataclass
class Answer:
    texts: list[Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


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


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _retry_after(exc: BaseException) -> float | None:
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
    if isinstance(exc, (UnusableAnswer, asyncio.TimeoutError, TimeoutError, ConnectionError)):
        return "retry"
    status = _status(exc)
    if status in FATAL_STATUS:
        return "fatal"
    if status is not None and (status in RETRYABLE_STATUS or status >= 500):
        return "retry"
    name = type(exc).__name__
    if any(word in name for word in ("Timeout", "Connection", "ServiceUnavailable", "InternalServer", "RateLimit")):
        return "retry"
    if status is None and name in ("APIError", "JSONDecodeError"):
        return "retry"
    return "fail"


def _positive(options: dict[str, Any], key: str, default: float | None, *, zero_ok: bool = False) -> float | None:
    value = options.get(key, default)
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero_ok):
        allowed = "a finite number >= 0" if zero_ok else "a finite number > 0"
        raise ConfigError(f"omniopd.teacher.options.{key}={value!r} is invalid: allowed {allowed}")
    return float(value)


class _LoopState:
    """asyncio primitives and HTTP clients bound to one event loop (engines may asyncio.run per step)."""

    def __init__(self, max_concurrency: int):
        self.semaphore = asyncio.Semaphore(max_concurrency)
        self.client: Any = None


class ReliableTeacher:
    """Base class of the HTTP teachers. Subclasses set `name`, `capabilities`, `_plan`, `_call`."""

    name = "reliable"
    capabilities = TeacherCapabilities(
        supports_n=True, supports_prefill=False, supports_seed=True, raw_completion=False
    )
    default_max_tokens_factor = 1.25

    def __init__(self, config: TeacherConfig, *, backend_options: Sequence[str] = ()):
        self.config = config
        options = dict(config.options)
        unknown = sorted(set(options) - set(SHARED_OPTIONS) - set(backend_options))
        if unknown:
            raise ConfigError(
                f"omniopd.teacher.options has unknown keys {unknown} for the {self.name} teacher: allowed "
                f"{sorted(set(SHARED_OPTIONS) | set(backend_options))}"
            )
        self.options = options
        self.backoff_base_s = _positive(options, "backoff_base_s", 0.5)
        self.backoff_max_s = _positive(options, "backoff_max_s", 30.0)
        self.max_retry_after_s = _positive(options, "max_retry_after_s", 60.0)
        self.max_tokens_factor = _positive(options, "max_tokens_factor", self.default_max_tokens_factor)
        self.input_cost = _positive(options, "input_cost_per_token", None, zero_ok=True)
        self.output_cost = _positive(options, "output_cost_per_token", None, zero_ok=True)
        self.api_key = self._read_api_key()
        self.meter = TeacherMeter(config.max_cost_usd)
        self.cache = TeacherCache(config.cache_path) if config.cache_path else None
        self._rpm = self._tpm = None
        if config.requests_per_minute or config.tokens_per_minute:
            from aiolimiter import AsyncLimiter

            if config.requests_per_minute:
                self._rpm = AsyncLimiter(config.requests_per_minute, 60.0)
            if config.tokens_per_minute:
                self._tpm = AsyncLimiter(config.tokens_per_minute, 60.0)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()

    # ---- subclass hooks -------------------------------------------------------------------------
    def _plan(self, request: TeacherRequest) -> CallPlan:
        raise NotImplementedError

    async def _call(self, request: TeacherRequest, plan: CallPlan, unit: Unit) -> Answer:
        raise NotImplementedError

    def _units(self, request: TeacherRequest) -> list[Unit]:
        if self.capabilities.supports_n:
            return [Unit(0, request.n, request.seed)]
        return [Unit(j, 1, request.seed + j) for j in range(request.n)]

    # ---- shared machinery -----------------------------------------------------------------------
    def _read_api_key(self) -> str | None:
        env = self.config.api_key_env
        if env is None:
            return None
        value = os.environ.get(env)
        if not value:
            raise ConfigError(
                f"omniopd.teacher.api_key_env={env!r}: the environment variable {env} is not set or empty "
                "(API keys are read from the environment only)"
            )
        return value

    def redact(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text

    def teacher_max_tokens(self, request: TeacherRequest) -> int:
        """Teacher tokens to ask for: the student-token-equivalents times max_tokens_factor."""
        return max(1, math.ceil(request.student_tokens * self.max_tokens_factor))

    def price(self, model: str | None, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD for one call: the configured per-token prices, else litellm's price table; None if unknown."""
        if self.input_cost is not None or self.output_cost is not None:
            return prompt_tokens * (self.input_cost or 0.0) + completion_tokens * (self.output_cost or 0.0)
        if model is None:
            return None
        import_litellm()
        import litellm

        try:
            prompt_usd, completion_usd = litellm.cost_per_token(
                model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
        except Exception:  # litellm raises for models missing from its table
            return None
        return float(prompt_usd) + float(completion_usd)

    def _check_budget_is_enforceable(self, model: str | None) -> None:
        if self.config.max_cost_usd is not None and self.price(model, 1000, 1000) is None:
            raise ConfigError(
                f"omniopd.teacher.max_cost_usd={self.config.max_cost_usd!r} cannot be enforced: no price for "
                f"model {model!r} in litellm's table; set omniopd.teacher.options.input_cost_per_token and "
                "output_cost_per_token"
            )

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState(self.config.max_concurrency)
        return state

    def _key(self, request: TeacherRequest, plan: CallPlan) -> str:
        return cache_key(
            backend=self.name,
            model=str(self.config.model),
            prefix=plan.content,
            n=request.n,
            teacher_max_tokens=plan.teacher_max_tokens,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            seed=request.seed,
        )

    async def sample(self, requests: Sequence[TeacherRequest]) -> list[TeacherResult]:
        tasks = [asyncio.ensure_future(self._sample_one(r)) for r in requests]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:  # a budget stop or a fatal error: do not leave calls running (and paying)
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _sample_one(self, request: TeacherRequest) -> TeacherResult:
        plan = self._plan(request)
        key = self._key(request, plan)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.meter.cache_hit()
                return TeacherResult(request.request_id, list(hit["texts"]), cached=True)
        start = time.perf_counter()
        units = self._units(request)
        outcomes = await asyncio.gather(*(self._run_unit(request, plan, unit) for unit in units))
        result = TeacherResult(request.request_id, None, seconds=time.perf_counter() - start)
        texts: list[str] = []
        errors = []
        for answer, retries, error in outcomes:
            result.retries += retries
            if answer is None:
                errors.append(error)
                continue
            texts.extend(answer.texts)
            result.prompt_tokens += answer.prompt_tokens
            result.completion_tokens += answer.completion_tokens
            result.cost_usd += answer.cost_usd
        if errors:
            self.meter.failure()
            result.error = f"{len(errors)} of {len(units)} teacher calls failed after retries; last error: {errors[-1]}"
            log.warning("teacher request %s failed: %s", request.request_id, result.error)
            return result
        result.texts = texts
        if self.cache is not None:
            self.cache.put(
                key,
                {
                    "texts": texts,
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "cost_usd": result.cost_usd,
                },
            )
        return result

    async def _run_unit(self, request: TeacherRequest, plan: CallPlan, unit: Unit) -> tuple[Answer | None, int, str]:
        """(answer, retries, last error): retried until usable or out of retries."""
        error = ""
        retries = 0
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                retries += 1
                self.meter.retry()
            await self._throttle(plan, unit)
            started = time.perf_counter()
            try:
                async with self._state().semaphore:
                    self.meter.check_budget()  # inside the slot: calls queued behind it see the latest spend
                    started = time.perf_counter()
                    # litellm gets the timeout too; wait_for is the backstop for a client that ignores it
                    answer = await asyncio.wait_for(self._call(request, plan, unit), self.config.timeout_s + 1.0)
                self.meter.record_call(
                    prompt_tokens=answer.prompt_tokens,
                    completion_tokens=answer.completion_tokens,
                    cost_usd=answer.cost_usd,
                    seconds=time.perf_counter() - started,
                )
                self._validate(answer, unit)
                return answer, retries, ""
            except (TeacherBudgetExceeded, TeacherAuthError, asyncio.CancelledError):
                raise
            except Exception as exc:  # classified below; unknown errors fail this request only
                if not isinstance(exc, UnusableAnswer):  # an unusable answer was already recorded as a call
                    self.meter.record_call(seconds=time.perf_counter() - started)
                kind = classify(exc)
                error = self.redact(f"{type(exc).__name__}: {exc}")[:500]
                if kind == "fatal":
                    raise TeacherAuthError(
                        f"the {self.name} teacher rejected the request with HTTP {_status(exc)} (check the key in "
                        f"${self.config.api_key_env} and the model name {self.config.model!r}): {error}"
                    ) from None
                if kind == "fail" or attempt == self.config.max_retries:
                    return None, retries, error
                delay = self._delay(attempt, _retry_after(exc))
                log.info(
                    "teacher request %s: attempt %d failed (%s); retrying in %.2fs",
                    request.request_id,
                    attempt + 1,
                    error[:200],
                    delay,
                )
                await asyncio.sleep(delay)
        return None, retries, error

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = min(self.backoff_max_s, self.backoff_base_s * (2.0**attempt))
        backoff = backoff / 2 + random.uniform(0, backoff / 2)  # "equal jitter": spread retries, keep a floor
        if retry_after is not None:
            # the server said when: wait at least that long (capped), plus a little jitter against herds
            return min(retry_after, self.max_retry_after_s) + random.uniform(0, 0.1 * self.backoff_base_s)
        return backoff

    async def _throttle(self, plan: CallPlan, unit: Unit) -> None:
        if self._rpm is not None:
            await self._rpm.acquire()
        if self._tpm is not None:
            estimate = plan.prompt_chars / 4 + unit.n * plan.teacher_max_tokens
            await self._tpm.acquire(min(float(self._tpm.max_rate), estimate))

    @staticmethod
    def _validate(answer: Answer, unit: Unit) -> None:
        if len(answer.texts) != unit.n:
            raise UnusableAnswer(f"asked for {unit.n} samples, got {len(answer.texts)}")
        bad = [i for i, t in enumerate(answer.texts) if not isinstance(t, str)]
        if bad:
            raise UnusableAnswer(f"samples {bad} are not text: {[answer.texts[i] for i in bad][:3]!r}")

    def metrics(self) -> dict[str, float]:
        return self.meter.snapshot()

    async def aclose(self) -> None:
        if self.cache is not None:
            self.cache.close()


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
