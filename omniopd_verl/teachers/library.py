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
- the run's ledger (`ledger/`: in-process by default, the run's Ray actor in verl): every raw call is
  admitted (budget reserved, `max_concurrency` run-wide, requests/tokens per minute in any 60 s, the
  circuit breaker) and settled (real cost; the answer cached in the same step); every request is
  recorded (`max_failure_rate`); a 401/403 or a 400 naming a rejected parameter stops every worker;
- micro-batching for `capabilities.batched` plugins: every request waiting at that moment goes into one
  raw call (up to `options.batch_rows` rows), one call at a time;
- accounting (`accounting.TeacherMeter`): calls, retries, failures, cache hits, tokens, seconds, and
  the cost: what the answer reports (`RawAnswer.cost_usd`), else the configured per-token prices, else
  litellm's price table for the plugin's `price_model`;
- the hard budget (`max_cost_usd`, rules in `accounting.Budget`, held by the ledger): before every raw call its worst case
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
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omniopd_verl.config import TeacherConfig
from omniopd_verl.errors import ConfigError, OmniOPDError, PluginError
from omniopd_verl.protocols import (
    STOP_REASONS,
    RawAnswer,
    RawRequest,
    RawSample,
    TeacherCapabilities,
    TeacherRequest,
    TeacherResult,
)
from omniopd_verl.teachers.accounting import (
    TeacherMeter,
    prompt_token_bound,
    settle_usage,
    valid_cost,
    worst_case_usage,
)
from omniopd_verl.teachers.cache import InvalidEntry, TeacherCache, cache_key, entry_texts
from omniopd_verl.teachers.identity import served_weights_digest, teacher_identity, url_secrets
from omniopd_verl.teachers.ledger import InProcessLedger, LedgerClient, LedgerCore, LedgerSettings
from omniopd_verl.teachers.prompts import chat_messages, raw_prompt, strip_cut
from omniopd_verl.teachers.reliability import (
    UnusableAnswer,
    classify,
    import_litellm,
    positive_option,
    rejected_parameter,
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


def split_options(name: str, plugin_class: Any, config: TeacherConfig) -> tuple[TeacherConfig, dict[str, Any]]:
    """(the config the plugin gets, with its own options only; the library's options). An option neither
    the plugin (`option_names`) nor the library (LIBRARY_OPTIONS) knows is a ConfigError naming it."""
    options = dict(config.options)
    library_options = {k: options.pop(k) for k in LIBRARY_OPTIONS if k in options}
    allowed = getattr(plugin_class, "option_names", None)
    if allowed is not None:
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            import difflib

            known = sorted(set(allowed) | set(LIBRARY_OPTIONS))
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" (did you mean {close[0]}?)" if close and len(unknown) == 1 else ""
            raise ConfigError(
                f"omniopd.teacher.options has unknown keys {unknown} for the {name} teacher{hint}: allowed {known}"
            )
    return dataclasses.replace(config, options=options), library_options


def build_teacher(
    name: str,
    plugin_class: Any,
    config: TeacherConfig,
    resources: Mapping[str, Any] | None = None,
    ledger: LedgerClient | None = None,
) -> Teacher:
    """Split the options, construct the plugin with its own, and wrap it (what registry.create_teacher does)."""
    plugin_config, library_options = split_options(name, plugin_class, config)
    try:
        plugin = plugin_class(plugin_config, resources=dict(resources)) if resources else plugin_class(plugin_config)
    except TypeError as exc:
        if resources and "resources" in str(exc):
            raise PluginError(f"teacher plugin {name!r} does not accept resources {sorted(resources)}: {exc}") from None
        raise
    return Teacher(name, plugin, config, library_options, ledger=ledger)


def check_teacher(name: str, plugin_class: Any, config: TeacherConfig, resources: Sequence[str] = ()) -> None:
    """What `train --dry-run` checks of a teacher without loading a model or calling it: option names, the
    library's option values, the API key's variable (set and non-empty), then the plugin's own values:
    `plugin_class.check_config(config, resources=...)` when the plugin defines it, else, for an HTTP teacher
    (capabilities.batched False: its constructor opens nothing), the constructor itself. A local-model
    teacher without check_config gets the name checks only. Raises ConfigError naming the option."""
    plugin_config, library_options = split_options(name, plugin_class, config)
    caps = getattr(plugin_class, "capabilities", None) or TeacherCapabilities()
    library_settings(library_options, caps)
    read_api_key(config)
    check = getattr(plugin_class, "check_config", None)
    try:
        if callable(check):
            check(plugin_config, resources=tuple(resources))
        elif not caps.batched:
            plugin_class(plugin_config)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # a plugin that did not raise ConfigError: still one line
        raise ConfigError(
            f"omniopd.teacher.options rejected by the {name} teacher: {type(exc).__name__}: {exc}"
        ) from None


@dataclass(frozen=True)
class LibrarySettings:
    """The library's options (LIBRARY_OPTIONS), validated."""

    backoff_base_s: float
    backoff_max_s: float
    max_retry_after_s: float
    max_tokens_factor: float
    input_cost: float | None
    output_cost: float | None
    batch_rows: int


def library_settings(options: Mapping[str, Any] | None, capabilities: TeacherCapabilities) -> LibrarySettings:
    """LIBRARY_OPTIONS values checked (ConfigError naming omniopd.teacher.options.KEY), defaults filled in."""
    opts = dict(options or {})
    rows = opts.get("batch_rows", 64)
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ConfigError(f"omniopd.teacher.options.batch_rows={rows!r} is invalid: allowed an integer >= 1")
    return LibrarySettings(
        backoff_base_s=positive_option(opts, "backoff_base_s", 0.5),
        backoff_max_s=positive_option(opts, "backoff_max_s", 30.0),
        max_retry_after_s=positive_option(opts, "max_retry_after_s", 60.0),
        max_tokens_factor=positive_option(opts, "max_tokens_factor", capabilities.max_tokens_factor),
        input_cost=positive_option(opts, "input_cost_per_token", None, zero_ok=True),
        output_cost=positive_option(opts, "output_cost_per_token", None, zero_ok=True),
        batch_rows=rows,
    )


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
        self.settling: set[asyncio.Future] = set()  # settlements sent, not yet acknowledged by the ledger
        self.warmed = False  # the plugin's warm() ran on this loop
        self.pending: list[tuple[RawRequest, asyncio.Future]] = []
        self.worker: asyncio.Task | None = None


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # a shielded call nobody awaits any more must not log "never retrieved"


class Teacher:
    """The teacher library around one plugin. See the module docstring."""

    def __init__(
        self,
        name: str,
        plugin: Any,
        config: TeacherConfig,
        options: Mapping[str, Any] | None = None,
        *,
        ledger: LedgerClient | None = None,
    ):
        self.name = name
        self.plugin = plugin
        self.config = config
        self.capabilities = plugin.capabilities
        # the plugin's own options shape its samples (e.g. `steer`), so they are part of the cache key; a
        # credential among them (extra_kwargs.api_key) is not: it must not reach the key, and rotating it
        # must not empty the cache
        self.plugin_options = mask_credentials({k: v for k, v in config.options.items() if k not in LIBRARY_OPTIONS})
        opts = dict(options or {})
        settings = library_settings(opts, self.capabilities)
        self.backoff_base_s, self.backoff_max_s = settings.backoff_base_s, settings.backoff_max_s
        self.max_retry_after_s, self.max_tokens_factor = settings.max_retry_after_s, settings.max_tokens_factor
        self.input_cost, self.output_cost = settings.input_cost, settings.output_cost
        self.batch_rows = settings.batch_rows
        self.price_model = opts.get("price_model", getattr(plugin, "price_model", None))
        self.api_key = read_api_key(config)
        self.redact = Redactor((self.api_key, *url_secrets(config.api_base), *option_secrets(config.options)))
        install_log_redaction(self.redact)
        self.meter = TeacherMeter()  # this process's counters; the ledger keeps the run's (teacher_run/*)
        # budget, rate limits, concurrency, health and the cache file belong to the run's ledger: in-process
        # unless the engine passes the run-wide one (verl: the Ray actor every reward worker shares)
        self._sampling = 0  # sample() calls running in this process (the last one hands back unused leases)
        self._owns_ledger = ledger is None
        if ledger is None:
            cache = TeacherCache(config.cache_path) if config.cache_path else None
            ledger = InProcessLedger(LedgerCore(LedgerSettings.from_teacher_config(config), cache=cache))
        self.ledger = ledger
        self._has_cache = bool(getattr(ledger, "has_cache", False))
        self.identity = None
        if self._has_cache and config.api_base:  # who answers is part of the cache key
            # the key goes only where the user sends it anyway: config.api_key_env names it for this host
            digest = served_weights_digest(config.api_base, str(config.model), self.api_key)
            self.identity = teacher_identity(config.api_base, digest)
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
        self._sampling += 1
        try:
            results = list(await asyncio.gather(*tasks))
            await self._settled()  # a settlement the ledger refused (it is gone) fails the batch loudly
            return results
        except BaseException as exc:
            for task in tasks:  # start nothing new
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if isinstance(exc, OmniOPDError):  # budget stop / bad key: every answer in flight still lands
                await self.drain()
            raise
        finally:  # admissions pre-granted to this process and not used go back to the run (ledger leases)
            self._sampling -= 1
            if self._sampling == 0:  # the last of this process's concurrent sample() calls
                try:
                    await self.ledger.release()
                except Exception as exc:  # a ledger that cannot be reached expires them itself (charged at worst)
                    log.warning("teacher ledger: unused pre-granted admissions not handed back (%s)", exc)

    async def drain(self) -> None:
        """Wait for every raw call in flight on this loop (their answers are counted and cached)."""
        state = self._state()
        while state.inflight or state.settling:
            await asyncio.gather(*list(state.inflight), *list(state.settling), return_exceptions=True)

    async def _settled(self) -> None:
        """Wait until the ledger has acknowledged every settlement sent from this loop; raise the first failure."""
        state = self._state()
        while state.settling:
            await asyncio.gather(*list(state.settling))

    def metrics(self) -> dict[str, float]:
        return self.meter.snapshot()

    async def aclose(self) -> None:
        try:
            await self.drain()
        finally:
            close = getattr(self.plugin, "aclose", None)
            if close is not None:
                await close()
            if self._owns_ledger:
                self.ledger.close()

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
        cause = errors[-1][:200] if errors else None  # what the failure-rate guard groups and names
        if errors:
            self.meter.failure()
            result.error = f"{len(errors)} of {len(units)} teacher calls failed after retries; last error: {errors[-1]}"
            log.warning("teacher request %s failed: %s", request.request_id, result.error)
        # the run's account; a failed request raises the run's stop (the failure-rate guard it may have
        # tripped), a successful one is still used: its answer is paid for
        stop = await self.ledger.record(cause=cause, cached=result.cached, retries=result.retries)
        if stop is not None and errors:
            raise stop
        if not errors:
            result.texts = texts
        return result

    async def _run_unit(self, unit: _Unit, cut: str) -> _Outcome:
        """Served from the cache, or retried until usable or out of retries."""
        if self._has_cache:
            texts = await self._cached(unit)
            if texts is not None:
                return _Outcome(texts, cached=True)
        error, retries = "", 0
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                retries += 1
                self.meter.retry()
            try:
                outcome = await self._attempt(unit, cut)
                outcome.retries = retries
                return outcome
            except (OmniOPDError, asyncio.CancelledError):  # a stop of the run (budget, auth, guard): no retry
                raise
            except Exception as exc:  # classified below; unknown errors fail this request only
                kind = classify(exc)
                error = self.redact(f"{type(exc).__name__}: {exc}")[:500]
                fatal = self._fatal_stop(exc)
                if fatal is not None:  # already stopped in the ledger (_settle_failed): the first stop's error
                    raise await self.ledger.stop(*fatal) from None
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
        if self.capabilities.batched:  # local compute: micro-batched, no concurrency slot of the ledger
            grant = await self._admit(unit, slot=False)
            started = time.perf_counter()
            try:
                answer, seconds = await self._submit(state, unit.raw)
            except BaseException as exc:
                await self._settle_failed(unit, grant, exc, time.perf_counter() - started)
                raise
        else:
            if not state.warmed:  # the plugin's client exists before the first grant: a grant is sent at once
                state.warmed = True
                warm = getattr(self.plugin, "warm", None)
                if warm is not None:
                    await warm()
            async with state.semaphore:
                grant = await self._admit(unit)  # inside the slot: sees the latest spend
                started = time.perf_counter()
                try:  # the plugin should time out itself; wait_for is the backstop for one that does not
                    answers = await asyncio.wait_for(self._call_plugin([unit.raw]), self.config.timeout_s + 1.0)
                except BaseException as exc:
                    await self._settle_failed(unit, grant, exc, time.perf_counter() - started)
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
        if usage.estimated:
            self.meter.add("teacher/usage_estimated")
        self.meter.record_call(
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost, seconds=seconds
        )
        try:
            texts, empty_stops = self._validate(answer, unit, cut)
        except UnusableAnswer:  # paid for all the same; retried by the caller
            await self._settle(grant, "transient", cost, prompt_tokens, completion_tokens)
            raise
        if empty_stops:
            self.meter.add("teacher/empty_stop_samples", empty_stops)
        entry = {
            "texts": texts,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cost_usd": cost,
        }
        # the answer travels with its cost: the ledger counts and caches it in one step. The call does not wait
        # for the ledger's acknowledgement (sent at once; sample() waits for every one before it returns)
        settle = asyncio.ensure_future(
            self._settle(
                grant, "ok", cost, prompt_tokens, completion_tokens, (unit.key, entry) if self._has_cache else None
            )
        )
        state.settling.add(settle)
        settle.add_done_callback(state.settling.discard)
        settle.add_done_callback(_retrieve)
        return _Outcome(texts, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost)

    # ------------------------------------------------------------------------------ budget and cache

    def _worst_case(self, unit: _Unit):
        usage = worst_case_usage(unit.prompt_bound, unit.raw.n, unit.raw.teacher_max_tokens)
        return usage, self.price(usage.prompt_tokens, usage.completion_tokens)

    async def _admit(self, unit: _Unit, *, slot: bool = True) -> int:
        """Wait for the ledger's grant: budget (the worst case reserved), rate limits, concurrency, health."""
        _, worst_usd = self._worst_case(unit)
        tokens = unit.prompt_chars / 4 + unit.raw.n * unit.raw.teacher_max_tokens  # TPM estimate, settled exactly
        return await self.ledger.admit(worst_usd, tokens, slot=slot)

    async def _settle(
        self,
        grant: int,
        outcome: str,
        cost_usd: float,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cache: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        dropped = await self.ledger.settle(
            grant,
            outcome=outcome,
            cost_usd=cost_usd,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cache=cache,
        )
        if dropped and self._has_cache:  # the ledger stopped storing: stop reading too (logged where it runs)
            self._has_cache = False
            log.warning(dropped)

    async def _settle_failed(self, unit: _Unit, grant: int, exc: BaseException, seconds: float) -> None:
        """A call that raised: free, unless it was abandoned at the timeout (the provider may bill it all)."""
        if not isinstance(exc, Exception):  # cancelled at loop teardown: free the reservation only
            await self._settle(grant, "cancelled", 0.0)
        elif _abandoned(exc):
            usage, worst_usd = self._worst_case(unit)
            cost = worst_usd or 0.0
            await self._settle(grant, "abandoned", cost, usage.prompt_tokens, usage.completion_tokens)
            self.meter.add("teacher/abandoned_calls")
            self.meter.add("teacher/usage_estimated")
            self.meter.record_call(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost_usd=cost,
                seconds=seconds,
            )
        else:
            fatal = self._fatal_stop(exc)
            if fatal is not None:  # stop every worker's queued calls before this call's slot is freed
                await self.ledger.stop(*fatal)
            await self._settle(grant, "transient" if classify(exc) == "retry" else "fail", 0.0)
            self.meter.record_call(seconds=seconds)

    def _fatal_stop(self, exc: BaseException) -> tuple[str, str] | None:
        """(kind, message) for an error that every call would get (401/403, a rejected parameter), else None."""
        error = self.redact(f"{type(exc).__name__}: {exc}")[:500]
        if classify(exc) == "fatal":
            return (
                "auth",
                f"the {self.name} teacher rejected the request with HTTP {status_of(exc)} (check the key in "
                f"{key_source(self.config, self.plugin)} and the model name {self.config.model!r}): {error}",
            )
        param = rejected_parameter(exc)
        if param is not None:
            return "rejected", self._rejected_message(param, error)
        return None

    def _rejected_message(self, param: str, error: str) -> str:
        return (
            f"the {self.name} teacher (model {self.config.model!r}) rejects the parameter {param!r} (HTTP 400), so "
            f"every call would fail: {error[:300]}. Fix: stop sending {param!r} (omniopd.teacher.{param} if it is "
            f"a teacher setting, else remove it from omniopd.teacher.options), or choose a model that accepts it"
        )

    def _max_chars(self, unit: _Unit) -> int:
        return unit.raw.teacher_max_tokens * MAX_CHARS_PER_TOKEN

    async def _cached(self, unit: _Unit) -> list[str] | None:
        """The validated cached texts of a unit, or None (absent, or invalid: then counted and logged)."""
        value = await self.ledger.cache_get(unit.key)  # the ledger reads the file (and logs a failing one)
        try:
            if isinstance(value, dict) and "__invalid__" in value:
                raise InvalidEntry(value["__invalid__"])
            return None if value is None else entry_texts(value, unit.raw.n, self._max_chars(unit))
        except InvalidEntry as exc:
            self.meter.add("teacher/cache_invalid")
            log.warning("teacher cache entry for %s is invalid (%s): asking the teacher", unit.raw.request_id, exc)
            return None

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


def _sample_text(sample: Any) -> str | None:
    text = sample if isinstance(sample, str) else getattr(sample, "text", None)
    return text if isinstance(text, str) else None


def _abandoned(exc: BaseException) -> bool:
    """A call given up at the timeout: sent, perhaps computed and billed, its answer never read."""
    return isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or "Timeout" in type(exc).__name__
