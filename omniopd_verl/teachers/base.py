"""The teacher protocol: N continuations of a student prefix, as text (ALGORITHM.md step 3).

A teacher plugin is a class constructed as `Plugin(config: TeacherConfig)` (backend-specific settings
in `config.options`) that implements `TeacherBackend`. The Auditor sends one response's anchors in
ascending order and many responses concurrently; backends own retries, rate limits, caching and cost
accounting (shared machinery lives beside this module).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class TeacherCapabilities:
    supports_n: bool  # one call returns n samples
    supports_prefill: bool  # can continue a partial assistant turn
    supports_seed: bool  # honours a per-request seed
    raw_completion: bool  # continues raw prefix text (exact continuation)


@dataclass(frozen=True)
class TeacherRequest:
    """Continue the student's prefix x + y_<t: `n` samples of at most `student_tokens` student-token-equivalents (C)."""

    request_id: str  # "<uid>:<anchor>", stable across reruns
    prompt_text: str  # x as the student saw it (chat template applied)
    response_prefix: str  # y_<t decoded: the partial answer to continue (never the chunk itself)
    n: int
    student_tokens: (
        int  # C, counted in student tokens; a teacher API gets teacher_max_tokens = this x max_tokens_factor
    )
    seed: int  # deterministic per (config seed, uid, anchor)
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


@runtime_checkable
class TeacherBackend(Protocol):
    name: str
    capabilities: TeacherCapabilities

    async def sample(self, requests: Sequence[TeacherRequest]) -> list[TeacherResult]:
        """One result per request, in order. Requests of one response arrive in ascending anchor order."""
        ...

    def metrics(self) -> dict[str, float]:
        """Cumulative counters: teacher/calls, retries, failures, cache_hits, prompt_tokens,
        completion_tokens, cost_usd, seconds."""
        ...

    async def aclose(self) -> None: ...
