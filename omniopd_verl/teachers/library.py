"""The teacher library: everything around a teacher plugin's raw call, applied to every teacher.

`registry.create_teacher(config)` loads the plugin named `config.name`, constructs it, and wraps it in
`Teacher`, which is what the engines call (`TeacherBackend`: `sample`, `metrics`, `aclose`). A plugin
writes only `sample_raw(list[RawRequest]) -> list[RawAnswer]` and declares `capabilities`; it gets:

- prompt rendering (`prompts.py`): the exact raw prefix (teacher_context block included) for
  raw-completion teachers, the chat conversation with a prefill or an instruct message for chat
  teachers, and the prefill whitespace undone on the way back;
- the token budget: `teacher_max_tokens = ceil(student_tokens x max_tokens_factor)`;
- units: a plugin without `n` gets N single-sample calls (seeds seed+j); only failed units are retried,
  so samples that did arrive are never thrown away or paid twice;
- the SQLite cache (`cache.py`): one entry per unit, written the moment a valid answer arrives, so a
  rerun never pays twice, even for answers that arrived after a budget stop. The key names the teacher
  that answered (`identity.py`: API base without credentials, weights digest a server reports); entries
  are validated when read (an invalid one is a miss, counted in `teacher/cache_invalid`); a cache that
  stops taking writes mid-run is dropped with a warning, and the answers keep coming (never lost);
- exactly-N validation: fewer or more samples, non-text samples, text holding a lone surrogate, and an
  empty sample whose finish reason is not a stop are malformed and retried; an empty sample that ended
  with a stop is the teacher's real answer ("end here"), kept and counted in `teacher/empty_stop_samples`;
- texts are cut to `MAX_CHARS_PER_TOKEN` characters per asked token before they are stored or returned:
  more than that cannot be within the C student tokens the audit uses, and a server that ignores
  max_tokens must not fill the cache (or the audit's tokenizer) with megabytes;
- retries with exponential backoff and jitter, honouring Retry-After (`reliability.classify`);
  401/403 stop the run (`TeacherAuthError`, naming the variable the key came from);
- a per-call timeout (`timeout_s`, asyncio.wait_for; not for batched local compute);
- concurrency (`max_concurrency` raw calls in flight) and client-side requests/tokens-per-minute limits;
- micro-batching for `capabilities.batched` plugins: every request waiting at that moment goes into one
  raw call (up to `options.batch_rows` rows), one call at a time;
- accounting (`accounting.TeacherMeter`): calls, retries, failures, cache hits, tokens, seconds, and
  the cost: what the answer reports (`RawAnswer.cost_usd`), else the configured per-token prices, else
  litellm's price table for the plugin's `price_model`;
- the hard budget (`max_cost_usd`, rules in `accounting.Budget`): before every raw call its worst case
  (prompt bound + n x max_tokens at the price table) is reserved, and a call that cannot fit is not
  sent; after it the real cost is settled (usage a server omits or reports impossibly is counted by us,
  `teacher/usage_estimated`; a call abandoned at the timeout is settled at its worst case,
  `teacher/abandoned_calls`). On a budget stop no new call starts, but every call already in flight is
  awaited, counted and cached before TeacherBudgetExceeded is raised (a raw call is shielded from
  cancellation for that reason);
- secrets (`secrets.py`): every error text is redacted of every key the process holds (and of the
  credentials in the API base and in credential-named options) before it is logged, stored in a
  TeacherResult or raised.

Options for every teacher (`config.options`; the rest go to the plugin): backoff_base_s (0.5),
backoff_max_s (30), max_retry_after_s (60), max_tokens_factor (the plugin's default), batch_rows (64,
batched plugins), input_cost_per_token / output_cost_per_token (override the price table),
price_model (a litellm price-table name).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import math
import random
import re
import sqlite3
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omniopd_verl.config import TeacherConfig
from omniopd_verl.errors import ConfigError, OmniOPDError, PluginError
from omniopd_verl.protocols import STOP_REASONS, RawAnswer, RawRequest, RawSample, TeacherRequest, TeacherResult
from omniopd_verl.teachers.accounting import (
    Budget,
    TeacherBudgetExceeded,
    TeacherMeter,
    prompt_token_bound,
    settle_usage,
    valid_cost,
    worst_case_usage,
)
from omniopd_verl.teachers.cache import InvalidEntry, TeacherCache, cache_key, entry_texts
from omniopd_verl.teachers.identity import served_weights_digest, teacher_identity, url_secrets
from omniopd_verl.teachers.prompts import chat_messages, raw_prompt, strip_cut
from omniopd_verl.teachers.reliability import (
    TeacherAuthError,
    UnusableAnswer,
    classify,
    import_litellm,
    positive_option,
    retry_after_of,
    status_of,
)
from omniopd_verl.teachers.secrets import (
    Redactor,
    install_log_redaction,
    key_source,
    mask_credentials,
    option_secrets,
    read_api_key,
)

log = logging.getLogger("omniopd_verl.teachers")

MAX_CHARS_PER_TOKEN = 256
"""Characters kept per asked teacher token: above the longest token of any vocabulary we know, so a cut
never reaches text the audit could use (it keeps C student tokens), yet a 2M-word answer stores ~16 KB."""
_SURROGATE = re.compile("[\ud800-\udfff]")

LIBRARY_OPTIONS = (
    "backoff_base_s",
    "backoff_max_s",
    "max_retry_after_s",
    "max_tokens_factor",
    "batch_rows",
    "input_cost_per_token",
    "output_cost_per_token",
    "price_model",
)


def build_teacher(
    name: str, plugin_class: Any, config: TeacherConfig, resources: Mapping[str, Any] | None = None
) -> Teacher:
    """Split the options, construct the plugin with its own, and wrap it (what registry.create_teacher does)."""
    options = dict(config.options)
    library_options = {k: options.pop(k) for k in LIBRARY_OPTIONS if k in options}
    allowed = getattr(plugin_class, "option_names", None)
    if allowed is not None:
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(
                f"omniopd.teacher.options has unknown keys {unknown} for the {name} teacher: allowed "
                f"{sorted(set(allowed) | set(LIBRARY_OPTIONS))}"
            )
    plugin_config = dataclasses.replace(config, options=options)
    try:
        plugin = plugin_class(plugin_config, resources=dict(resources)) if resources else plugin_class(plugin_config)
    except TypeError as exc:
        if resources and "resources" in str(exc):
            raise PluginError(f"teacher plugin {name!r} does not accept resources {sorted(resources)}: {exc}") from None
        raise
    return Teacher(name, plugin, config, library_options)


@dataclass
class _Unit:
    """One raw call's worth of one request: `raw.n` samples starting at sample `offset`."""

    raw: RawRequest
    offset: int
    key: str
    prompt_chars: int
    prompt_bound: int  # upper bound on the prompt's tokens (accounting.prompt_token_bound)


@dataclass
class _Outcome:
    texts: list[str] | None
    retries: int = 0
    error: str = ""
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class _LoopState:
    """asyncio primitives bound to one event loop (engines may asyncio.run once per step)."""

    def __init__(self, teacher: Teacher):
        self.semaphore = asyncio.Semaphore(teacher.config.max_concurrency)
        self.inflight: set[asyncio.Future] = set()
        self.pending: list[tuple[RawRequest, asyncio.Future]] = []
        self.worker: asyncio.Task | None = None
        self.settled = asyncio.Event()  # set (and replaced) whenever a reservation settles


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # a shielded call nobody awaits any more must not log "never retrieved"


class Teacher:
    """The teacher library around one plugin. See the module docstring."""

    def __init__(self, name: str, plugin: Any, config: TeacherConfig, options: Mapping[str, Any] | None = None):
        self.name = name
        self.plugin = plugin
        self.config = config
        self.capabilities = plugin.capabilities
        # the plugin's own options shape its samples (e.g. `steer`), so they are part of the cache key; a
        # credential among them (extra_kwargs.api_key) is not: it must not reach the key, and rotating it
        # must not empty the cache
        self.plugin_options = mask_credentials({k: v for k, v in config.options.items() if k not in LIBRARY_OPTIONS})
        opts = dict(options or {})
        self.backoff_base_s = positive_option(opts, "backoff_base_s", 0.5)
        self.backoff_max_s = positive_option(opts, "backoff_max_s", 30.0)
        self.max_retry_after_s = positive_option(opts, "max_retry_after_s", 60.0)
        self.max_tokens_factor = positive_option(opts, "max_tokens_factor", self.capabilities.max_tokens_factor)
        self.input_cost = positive_option(opts, "input_cost_per_token", None, zero_ok=True)
        self.output_cost = positive_option(opts, "output_cost_per_token", None, zero_ok=True)
        rows = opts.get("batch_rows", 64)
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ConfigError(f"omniopd.teacher.options.batch_rows={rows!r} is invalid: allowed an integer >= 1")
        self.batch_rows = rows
        self.price_model = opts.get("price_model", getattr(plugin, "price_model", None))
        self.api_key = read_api_key(config)
        self.redact = Redactor((self.api_key, *url_secrets(config.api_base), *option_secrets(config.options)))
        install_log_redaction(self.redact)
        self.meter = TeacherMeter()
        self.budget = Budget(config.max_cost_usd)
        self.cache = TeacherCache(config.cache_path) if config.cache_path else None
        self.identity = None
        if self.cache is not None and config.api_base:  # who answers is part of the cache key
            # the key goes only where the user sends it anyway: config.api_key_env names it for this host
            digest = served_weights_digest(config.api_base, str(config.model), self.api_key)
            self.identity = teacher_identity(config.api_base, digest)
        self._rpm = self._tpm = None
        if config.requests_per_minute or config.tokens_per_minute:
            from aiolimiter import AsyncLimiter

            if config.requests_per_minute:
                self._rpm = AsyncLimiter(config.requests_per_minute, 60.0)
            if config.tokens_per_minute:
                self._tpm = AsyncLimiter(config.tokens_per_minute, 60.0)
        self._async = inspect.iscoroutinefunction(plugin.sample_raw)
        self._render_chat = getattr(plugin, "render_chat", None)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()
        caps = self.capabilities
        if config.max_cost_usd is not None and caps.priced and not caps.reports_cost and self.price(1, 1) is None:
            raise ConfigError(
                f"omniopd.teacher.max_cost_usd={config.max_cost_usd!r} cannot be enforced: no price for the "
                f"{name} teacher (model {self.price_model!r} is not in litellm's price table); set "
                "omniopd.teacher.options.input_cost_per_token and output_cost_per_token, or options.price_model"
            )

    # ------------------------------------------------------------------------------ public API

    async def sample(self, requests: Sequence[TeacherRequest]) -> list[TeacherResult]:
        """One TeacherResult per request, in order (see TeacherResult: exactly n texts, or an error)."""
        tasks = [asyncio.ensure_future(self._sample_one(r)) for r in requests]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException as exc:
            for task in tasks:  # start nothing new
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if isinstance(exc, OmniOPDError):  # budget stop / bad key: every answer in flight still lands
                await self.drain()
            raise

    async def drain(self) -> None:
        """Wait for every raw call in flight on this loop (their answers are counted and cached)."""
        state = self._state()
        while state.inflight:
            await asyncio.gather(*list(state.inflight), return_exceptions=True)

    def metrics(self) -> dict[str, float]:
        return self.meter.snapshot()

    async def aclose(self) -> None:
        try:
            await self.drain()
        finally:
            close = getattr(self.plugin, "aclose", None)
            if close is not None:
                await close()
            if self.cache is not None:
                self.cache.close()

    def teacher_max_tokens(self, request: TeacherRequest) -> int:
        """Teacher tokens to ask for: the student-token budget times max_tokens_factor."""
        return max(1, math.ceil(request.student_tokens * self.max_tokens_factor))

    def render(self, request: TeacherRequest) -> tuple[str | None, list[dict[str, Any]] | None, str]:
        """(raw prompt, chat messages, prefill cut): exactly what the plugin is sent."""
        if self.capabilities.raw_completion:
            return raw_prompt(request, self._render_chat), None, ""
        messages, cut = chat_messages(request, prefill=self.capabilities.supports_prefill)
        return None, messages, cut

    def price(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD for one call: configured per-token prices, else litellm's table for price_model; None if unknown."""
        if self.input_cost is not None or self.output_cost is not None:
            return prompt_tokens * (self.input_cost or 0.0) + completion_tokens * (self.output_cost or 0.0)
        if not self.capabilities.priced:
            return 0.0
        if self.price_model is None:
            return None
        litellm = import_litellm()
        try:
            prompt_usd, completion_usd = litellm.cost_per_token(
                model=self.price_model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
        except Exception:  # litellm raises for models missing from its table
            return None
        return float(prompt_usd) + float(completion_usd)

    # ------------------------------------------------------------------------------ one request

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState(self)
        return state

    def _units(self, request: TeacherRequest) -> tuple[list[_Unit], str]:
        prompt, messages, cut = self.render(request)
        content: Any = (
            prompt
            if messages is None
            else {
                "messages": messages,
                "continuation": "prefill" if self.capabilities.supports_prefill else "instruct",
            }
        )
        chars = len(prompt) if prompt is not None else sum(len(str(m.get("content", ""))) for m in messages or [])
        bound = prompt_token_bound(prompt, messages)
        max_tokens = self.teacher_max_tokens(request)
        if self.capabilities.supports_n or request.n == 1:
            specs = [(0, request.n, request.seed, request.seed)]
        else:  # the cache key says which sample of the request this is, not only its seed
            specs = [(j, 1, request.seed + j, [request.seed, j]) for j in range(request.n)]
        units = []
        for offset, n, seed, key_seed in specs:
            raw = RawRequest(
                request_id=request.request_id if len(specs) == 1 else f"{request.request_id}#{offset}",
                prompt=prompt,
                messages=tuple(messages) if messages is not None else None,
                n=n,
                teacher_max_tokens=max_tokens,
                temperature=self.config.temperature,
                top_p=self.config.top_p,
                seed=seed,
                timeout_s=self.config.timeout_s,
            )
            key = cache_key(
                backend=self.name,
                model=str(self.config.model),
                prefix=content,
                n=n,
                teacher_max_tokens=max_tokens,
                temperature=self.config.temperature,
                top_p=self.config.top_p,
                seed=key_seed,
                options=self.plugin_options,
                teacher=self.identity,
            )
            units.append(_Unit(raw, offset, key, chars, bound))
        return units, cut

    async def _sample_one(self, request: TeacherRequest) -> TeacherResult:
        units, cut = self._units(request)
        start = time.perf_counter()
        outcomes = await asyncio.gather(*(self._run_unit(u, cut) for u in units))
        result = TeacherResult(request.request_id, None, seconds=time.perf_counter() - start)
        texts: list[str] = []
        errors = []
        for outcome in outcomes:
            result.retries += outcome.retries
            result.prompt_tokens += outcome.prompt_tokens
            result.completion_tokens += outcome.completion_tokens
            result.cost_usd += outcome.cost_usd
            if outcome.texts is None:
                errors.append(outcome.error)
            else:
                texts.extend(outcome.texts)
        result.cached = all(o.cached for o in outcomes)
        if result.cached:
            self.meter.cache_hit()
        if errors:
            self.meter.failure()
            result.error = f"{len(errors)} of {len(units)} teacher calls failed after retries; last error: {errors[-1]}"
            log.warning("teacher request %s failed: %s", request.request_id, result.error)
            return result
        result.texts = texts
        return result

    async def _run_unit(self, unit: _Unit, cut: str) -> _Outcome:
        """Served from the cache, or retried until usable or out of retries."""
        if self.cache is not None:
            texts = self._cached(unit)
            if texts is not None:
                return _Outcome(texts, cached=True)
        error, retries = "", 0
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                retries += 1
                self.meter.retry()
            await self._throttle(unit)
            try:
                outcome = await self._attempt(unit, cut)
                outcome.retries = retries
                return outcome
            except (TeacherBudgetExceeded, TeacherAuthError, asyncio.CancelledError):
                raise
            except Exception as exc:  # classified below; unknown errors fail this request only
                kind = classify(exc)
                error = self.redact(f"{type(exc).__name__}: {exc}")[:500]
                if kind == "fatal":
                    raise TeacherAuthError(
                        f"the {self.name} teacher rejected the request with HTTP {status_of(exc)} (check the key in "
                        f"{key_source(self.config, self.plugin)} and the model name {self.config.model!r}): {error}"
                    ) from None
                if kind == "fail" or attempt == self.config.max_retries:
                    return _Outcome(None, retries, error)
                delay = self._delay(attempt, retry_after_of(exc))
                log.info(
                    "teacher request %s: attempt %d failed (%s); retrying in %.2fs",
                    unit.raw.request_id,
                    attempt + 1,
                    error[:200],
                    delay,
                )
                await asyncio.sleep(delay)
        return _Outcome(None, retries, error)

    async def _attempt(self, unit: _Unit, cut: str) -> _Outcome:
        """One raw call, shielded: if the caller is cancelled (a sibling's budget stop), the call still
        completes, and its answer is counted and cached."""
        state = self._state()
        task = asyncio.ensure_future(self._call_and_keep(state, unit, cut))
        state.inflight.add(task)
        task.add_done_callback(state.inflight.discard)
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _call_and_keep(self, state: _LoopState, unit: _Unit, cut: str) -> _Outcome:
        if self.capabilities.batched:
            reservation = await self._reserve(state, unit)
            started = time.perf_counter()
            try:
                answer, seconds = await self._submit(state, unit.raw)
            except BaseException as exc:
                self._settle_failed(state, unit, reservation, exc, time.perf_counter() - started)
                raise
        else:
            async with state.semaphore:
                reservation = await self._reserve(state, unit)  # inside the slot: sees the latest spend
                started = time.perf_counter()
                try:  # the plugin should time out itself; wait_for is the backstop for one that does not
                    answers = await asyncio.wait_for(self._call_plugin([unit.raw]), self.config.timeout_s + 1.0)
                except BaseException as exc:
                    self._settle_failed(state, unit, reservation, exc, time.perf_counter() - started)
                    raise
                answer, seconds = answers[0], time.perf_counter() - started
        received = [t for t in (_sample_text(s) for s in getattr(answer, "samples", None) or []) if t is not None]
        usage = settle_usage(
            getattr(answer, "prompt_tokens", None),
            getattr(answer, "completion_tokens", None),
            prompt_bound=unit.prompt_bound,
            texts=received,
        )
        prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
        cost = valid_cost(getattr(answer, "cost_usd", None))
        if cost is None:
            cost = self.price(prompt_tokens, completion_tokens) or 0.0
        self._settle(state, reservation, cost)
        if usage.estimated:
            self.meter.add("teacher/usage_estimated")
        self.meter.record_call(
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost, seconds=seconds
        )
        texts, empty_stops = self._validate(answer, unit, cut)
        if empty_stops:
            self.meter.add("teacher/empty_stop_samples", empty_stops)
        self._store(
            unit.key,
            {"texts": texts, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "cost_usd": cost},
        )
        return _Outcome(texts, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost)

    # ------------------------------------------------------------------------------ budget and cache

    def _worst_case(self, unit: _Unit):
        usage = worst_case_usage(unit.prompt_bound, unit.raw.n, unit.raw.teacher_max_tokens)
        return usage, self.price(usage.prompt_tokens, usage.completion_tokens)

    async def _reserve(self, state: _LoopState, unit: _Unit):
        """Reserve the call's worst case; wait while it fits only after the calls in flight settle."""
        _, worst_usd = self._worst_case(unit)
        while True:
            settled = state.settled  # taken before asking: a settle after the refusal wakes us
            reservation = self.budget.reserve(worst_usd)
            if reservation is not None:
                return reservation
            try:  # the timeout covers a reservation held by another event loop (nothing here would wake us)
                await asyncio.wait_for(settled.wait(), 1.0)
            except asyncio.TimeoutError:
                pass

    def _settle(self, state: _LoopState, reservation, cost_usd: float) -> None:
        self.budget.settle(reservation, cost_usd)
        state.settled.set()
        state.settled = asyncio.Event()

    def _settle_failed(self, state: _LoopState, unit: _Unit, reservation, exc: BaseException, seconds: float) -> None:
        """A call that raised: free, unless it was abandoned at the timeout (the provider may bill it all)."""
        if not isinstance(exc, Exception):  # cancelled at loop teardown: free the reservation only
            self._settle(state, reservation, 0.0)
        elif _abandoned(exc):
            usage, worst_usd = self._worst_case(unit)
            cost = worst_usd or 0.0
            self._settle(state, reservation, cost)
            self.meter.add("teacher/abandoned_calls")
            self.meter.add("teacher/usage_estimated")
            self.meter.record_call(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost_usd=cost,
                seconds=seconds,
            )
        else:
            self._settle(state, reservation, 0.0)
            self.meter.record_call(seconds=seconds)

    def _max_chars(self, unit: _Unit) -> int:
        return unit.raw.teacher_max_tokens * MAX_CHARS_PER_TOKEN

    def _cached(self, unit: _Unit) -> list[str] | None:
        """The validated cached texts of a unit, or None (absent, or invalid: then counted and logged)."""
        try:
            value = self.cache.get(unit.key)
            return None if value is None else entry_texts(value, unit.raw.n, self._max_chars(unit))
        except InvalidEntry as exc:
            self.meter.add("teacher/cache_invalid")
            log.warning("teacher cache entry for %s is invalid (%s): asking the teacher", unit.raw.request_id, exc)
            return None
        except sqlite3.Error as exc:  # the file failed under us: ask the teacher (storing will say the rest)
            log.warning("teacher cache %s cannot be read (%s): asking the teacher", self.cache.path, exc)
            return None

    def _store(self, key: str, value: dict[str, Any]) -> None:
        """Cache one answer; a cache that cannot take it is dropped for the rest of the run, the answer kept."""
        if self.cache is None:
            return
        try:
            self.cache.put(key, value)
        except (sqlite3.Error, OSError) as exc:
            cache, self.cache = self.cache, None
            log.warning(
                "teacher cache %s cannot be written (%s): continuing WITHOUT the cache; answers from now on "
                "are used but not stored",
                cache.path,
                exc,
            )
            cache.close()

    async def _call_plugin(self, raws: list[RawRequest]) -> list[RawAnswer]:
        if self._async:
            answers = await self.plugin.sample_raw(raws)
        else:
            answers = await asyncio.to_thread(self.plugin.sample_raw, raws)
        answers = list(answers)
        if len(answers) != len(raws):
            raise PluginError(
                f"teacher plugin {self.name!r}.sample_raw returned {len(answers)} answers for {len(raws)} requests "
                "(it must return one RawAnswer per RawRequest, in order)"
            )
        return answers

    async def _submit(self, state: _LoopState, raw: RawRequest) -> tuple[RawAnswer, float]:
        """Micro-batching: queue the request; one worker sends everything waiting as one raw call."""
        future = asyncio.get_running_loop().create_future()
        state.pending.append((raw, future))
        if state.worker is None or state.worker.done():
            state.worker = asyncio.ensure_future(self._drain_batches(state))
        return await future

    async def _drain_batches(self, state: _LoopState) -> None:
        waiting = -1
        while waiting != len(state.pending):  # let concurrent sample() calls enqueue before the first batch
            waiting = len(state.pending)
            await asyncio.sleep(0)
        while state.pending:
            batch, rows = [], 0
            while state.pending and (not batch or rows + state.pending[0][0].n <= self.batch_rows):
                item = state.pending.pop(0)
                batch.append(item)
                rows += item[0].n
            started = time.perf_counter()
            try:
                answers = await self._call_plugin([raw for raw, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch + state.pending:
                    future.cancel()
                state.pending.clear()
                raise
            except Exception as exc:  # every request of the batch learns why (classified by each caller)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            share = (time.perf_counter() - started) / len(batch)
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result((answer, share))

    def _validate(self, answer: RawAnswer, unit: _Unit, cut: str) -> tuple[list[str], int]:
        """(texts, empty samples that ended with a stop) or UnusableAnswer (retried)."""
        samples = list(getattr(answer, "samples", None) or [])
        if len(samples) != unit.raw.n:
            raise UnusableAnswer(f"teacher {self.name!r} returned {len(samples)} samples, asked for {unit.raw.n}")
        texts, empty_stops = [], 0
        for j, sample in enumerate(samples):
            text, finish = (
                (sample, None)
                if isinstance(sample, str)
                else (
                    getattr(sample, "text", None),
                    getattr(sample, "finish_reason", None),
                )
            )
            if not isinstance(text, str) or not isinstance(sample, (str, RawSample)):
                raise UnusableAnswer(f"teacher {self.name!r}: sample {unit.offset + j} is not text: {sample!r:.100}")
            bad = _SURROGATE.search(text)
            if bad:  # half of a UTF-16 pair: not text, and it could not be stored or written
                raise UnusableAnswer(
                    f"teacher {self.name!r}: sample {unit.offset + j} holds a lone surrogate "
                    f"\\u{ord(bad.group()):04x} at character {bad.start()} (malformed text)"
                )
            text = strip_cut(text, cut)[: self._max_chars(unit)]
            if not text:
                if finish not in STOP_REASONS:
                    raise UnusableAnswer(
                        f"teacher {self.name!r}: sample {unit.offset + j} is empty with finish reason {finish!r} "
                        "(malformed: nothing came back, yet the teacher did not stop)"
                    )
                empty_stops += 1
            texts.append(text)
        return texts, empty_stops

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = min(self.backoff_max_s, self.backoff_base_s * (2.0**attempt))
        backoff = backoff / 2 + random.uniform(0, backoff / 2)  # "equal jitter": spread retries, keep a floor
        if retry_after is not None:
            # the server said when: wait at least that long (capped), plus a little jitter against herds
            return min(retry_after, self.max_retry_after_s) + random.uniform(0, 0.1 * self.backoff_base_s)
        return backoff

    async def _throttle(self, unit: _Unit) -> None:
        if self._rpm is not None:
            await self._rpm.acquire()
        if self._tpm is not None:
            estimate = unit.prompt_chars / 4 + unit.raw.n * unit.raw.teacher_max_tokens
            await self._tpm.acquire(min(float(self._tpm.max_rate), estimate))


def _sample_text(sample: Any) -> str | None:
    text = sample if isinstance(sample, str) else getattr(sample, "text", None)
    return text if isinstance(text, str) else None


def _abandoned(exc: BaseException) -> bool:
    """A call given up at the timeout: sent, perhaps computed and billed, its answer never read."""
    return isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or "Timeout" in type(exc).__name__
