"""Every plugin protocol in one place: teachers, similarity metrics, schedulers (entry-point groups
`omniopd_verl.teachers`, `omniopd_verl.similarity`, `omniopd_verl.schedulers`).

A plugin is a class registered by entry point; the registry checks at load that it has the methods
of its kind (`REQUIRED_METHODS`) and names the plugin and the missing method when it does not.

Teachers come in two layers:
- `TeacherPlugin` is what a plugin author writes: the raw call only ("for these prefixes, sample these
  continuations"), `sample_raw(requests: list[RawRequest]) -> list[RawAnswer]`, plus its
  `capabilities` declared as data.
- `TeacherBackend` is what the engines use (`sample(TeacherRequest) -> TeacherResult`, `metrics()`,
  `aclose()`): the teacher library (`omniopd_verl.teachers.library.Teacher`), which the registry wraps
  around every plugin, built-in or third-party (`registry.create_teacher`). See docs/teachers.md.

Pure data and typing: imports nothing heavy (no torch, no network).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: schedulers receive tensors, this module does not import torch
    import torch

# ---------------------------------------------------------------------------------------------- teachers


@dataclass(frozen=True)
class TeacherCapabilities:
    """What a teacher plugin can do, declared as data; the teacher library plans its calls from it."""

    supports_n: bool = True
    """One raw call returns n samples. False: the library sends n single-sample calls (seeds seed+j)."""
    supports_prefill: bool = True
    """Chat teachers: continue a partial assistant turn (prefill). False: the partial answer is shown in a
    user message and continued verbatim ("instruct"). Ignored by raw-completion teachers."""
    supports_seed: bool = True
    """Honours RawRequest.seed."""
    raw_completion: bool = True
    """True: the plugin continues raw text (RawRequest.prompt). False: a chat API (RawRequest.messages)."""
    batched: bool = False
    """True (local engines): one raw call takes every waiting request (up to options.batch_rows rows), one
    call at a time, no timeout. False (HTTP): one request per raw call, max_concurrency calls in flight."""
    priced: bool = True
    """Calls cost money: a budget (max_cost_usd) then needs a price. False: local compute, cost 0."""
    reports_cost: bool = False
    """Every RawAnswer carries cost_usd (what the server charged): a budget needs no price table."""
    max_tokens_factor: float = 1.25
    """Default teacher tokens asked per student token (options.max_tokens_factor overrides)."""


@dataclass(frozen=True)
class TeacherRequest:
    """What an engine asks: continue the student's prefix x + y_<t, `n` samples of at most
    `student_tokens` student-token-equivalents (C)."""

    request_id: str  # "<uid>:<anchor>", stable across reruns
    prompt_text: str  # x as the student saw it (chat template applied)
    response_prefix: str  # y_<t decoded: the partial answer to continue (never the chunk itself)
    n: int
    student_tokens: (
        int  # C, counted in student tokens; a teacher API gets teacher_max_tokens = this x max_tokens_factor
    )
    seed: int  # deterministic per (config seed, StudentResponse.seed_key or uid, anchor)
    prompt_messages: tuple[dict[str, Any], ...] | None = None  # original chat messages (chat-API teachers)
    teacher_context: str | None = None  # privileged text for the teacher only (e.g. a reference solution)

    @property
    def prefix_text(self) -> str:
        """The raw-completion prefix: prompt text followed by the partial response."""
        return self.prompt_text + self.response_prefix


@dataclass
class TeacherResult:
    """Exactly `n` texts, or `texts=None` with `error` set after the last retry. Never fewer texts."""

    request_id: str
    texts: list[str] | None
    error: str | None = None
    cached: bool = False
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RawRequest:
    """One raw call's worth, already rendered by the teacher library: send exactly this."""

    request_id: str
    prompt: str | None
    """raw_completion teachers: exactly the text to continue (teacher_context block included)."""
    messages: tuple[dict[str, Any], ...] | None
    """chat teachers: the whole conversation to send (system context, prefill or instruct message included)."""
    n: int
    teacher_max_tokens: int
    """What to send as the API's max_tokens (student_tokens x max_tokens_factor, rounded up)."""
    temperature: float
    top_p: float
    seed: int
    timeout_s: float


STOP_REASONS = frozenset({"stop", "end_turn", "stop_sequence", "eos"})
"""Finish reasons that mean "the teacher chose to end here" (an empty text with one is a real answer)."""


@dataclass
class RawSample:
    """One continuation and why it ended: 'stop' (EOS / end of turn) or 'length' (hit teacher_max_tokens).
    A sample whose text is empty and whose finish reason is not a stop is malformed and retried."""

    text: str
    finish_reason: str | None = None


@dataclass
class RawAnswer:
    """A raw call's answer to one RawRequest: exactly `n` samples, and the usage the server reported."""

    samples: list[RawSample]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    """USD the server reported for this call; None = priced by the library from the token counts."""


@runtime_checkable
class TeacherPlugin(Protocol):
    """What a teacher plugin writes. Constructed as `Plugin(config: TeacherConfig)` (its own options in
    `config.options`), or `Plugin(config, resources=...)` when the engine shares objects with it.

    `sample_raw` may be `async def` (HTTP clients) or a plain function (local compute; the library runs
    it in a worker thread). It returns one RawAnswer per request, in order, or raises: the library
    retries `TransientTeacherError`, timeouts, connection errors and HTTP 408/409/425/429/5xx (an
    exception with an int `status_code`), stops on HTTP 401/403, and fails the request otherwise.

    Optional members: `aclose()` (async), `warm()` (async: called once per event loop before its first
    admission, to build what the first call needs, e.g. the HTTP client, so that a granted call is sent at
    once and a rate window's calls reach the server as they were granted), `render_chat(messages) -> str` (a raw-completion teacher with
    a chat template: used when a teacher_context must enter a chat prompt as a system message),
    `price_model: str | None` (a litellm price-table name), `option_names: tuple[str, ...]` (its own
    keys in config.options, checked by the library), `key_env: str | None` (the environment variable
    its API key came from when api_key_env is not set, named in error messages).
    """

    capabilities: TeacherCapabilities

    def sample_raw(self, requests: Sequence[RawRequest]) -> Sequence[RawAnswer] | Awaitable[Sequence[RawAnswer]]: ...


@runtime_checkable
class TeacherBackend(Protocol):
    """What the engines call (the teacher library implements it around every plugin)."""

    name: str
    capabilities: TeacherCapabilities

    async def sample(self, requests: Sequence[TeacherRequest]) -> list[TeacherResult]:
        """One result per request, in order. Requests of one response arrive in ascending anchor order."""
        ...

    def metrics(self) -> dict[str, float]:
        """Cumulative counters: teacher/calls, retries, failures, cache_hits, prompt_tokens,
        completion_tokens, cost_usd, seconds, empty_stop_samples."""
        ...

    async def aclose(self) -> None: ...


# -------------------------------------------------------------------------------------------- similarity


@runtime_checkable
class Similarity(Protocol):
    """phi for many pairs at once. Returns one float in [0, 1] per pair, in order.

    Called once per batch with every pair, so implementations can batch and de-duplicate.
    Constructed as `Plugin(**similarity_options)`, also by `train --dry-run` and `audit` to check the
    options (registry.check_plugins): the constructor checks its values (raise ConfigError naming
    `omniopd.similarity_options.KEY`) and loads no model (load on first `score`, as `embedding` does).
    """

    name: str

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]: ...


# -------------------------------------------------------------------------------------------- schedulers


@runtime_checkable
class Scheduler(Protocol):
    """Chooses anchor starts for one response. Must return ascending, non-overlapping, in-range anchors.
    Constructed as `Plugin(**scheduler_options)`, also by `train --dry-run` (registry.check_plugins): the
    constructor checks its option values (ConfigError naming `omniopd.scheduler_options.KEY`)."""

    needs_entropy: bool  # True: `entropy_T` is required; the auditor refuses to call without it
    # Optional attribute `respects_chunks = False` declares that the scheduler ignores M (a dense
    # baseline); the auditor then checks anchors without the M cap. Absent means True. (Not a protocol
    # member, so plugins that omit it still satisfy isinstance(x, Scheduler).)

    def select(
        self, entropy_T: torch.Tensor | None, response_len: int, chunks: int, chunk_len: int, *, seed: int
    ) -> list[int]: ...


REQUIRED_METHODS: dict[str, tuple[str, ...]] = {
    "teachers": ("sample_raw",),
    "similarity": ("score",),
    "schedulers": ("select",),
}
"""Methods a plugin class of each kind must define; checked by `registry.load`."""
