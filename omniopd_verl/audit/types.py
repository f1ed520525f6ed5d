"""The data that crosses the audit seam: what an engine hands the Auditor and what it gets back.

Both engines (verl, local) build `StudentResponse`s and turn `ResponseAudit`s into token tensors with
`omniopd_verl.core.chunk_token_credit`; nothing else about the audit leaks into them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class StudentResponse:
    """One finished student sample, as the Auditor needs it."""

    uid: str
    """Sample id: names the response in requests, records and errors; the audit's random draws are keyed on
    it unless `seed_key` is set."""
    prompt_text: str
    """The prompt exactly as the student saw it (chat template applied): the teacher's prefix starts here."""
    response_ids: list[int]
    """The student's response token ids (no padding)."""
    logprobs_T: torch.Tensor
    """log pi_theta(y_t | s_t) for each response token, float [T]."""
    entropy_T: torch.Tensor | None = None
    """Per-token entropy of the student's distribution, float [T]; required by entropy-based schedulers."""
    entropy_source: str = "exact"
    """Where entropy_T came from: 'exact' or 'rollout_topk' (logged per run)."""
    prompt_messages: list[dict[str, Any]] | None = None
    """The original chat messages, for chat-API teachers that continue a partial assistant turn."""
    teacher_context: str | None = None
    """Optional privileged text shown to the teacher only (e.g. the reference solution in self-distillation)."""
    seed_key: str | None = None
    """What the audit's random draws are keyed on: the scheduler's seed and each teacher request's seed derive
    from (config seed, seed_key, anchor); None = uid. verl sets it to a hash of the trajectory's tokens, so a
    rerun's identical trajectory gets the same teacher requests (and cache entries) under a new uid."""


@dataclass
class ChunkAudit:
    """One audited chunk: y[start:end] in response-token offsets, and how the teacher judged it."""

    start: int
    end: int
    entropy: float | None
    student_text: str
    teacher_texts: list[str]
    """Exactly the texts that were scored (after trimming to the student's chunk length)."""
    similarities: list[float]
    k_sem: float
    """Soft acceptance k_sem = sum of the similarities (ALGORITHM.md step 4); k_sem_frac = k_sem / N."""
    pi_bar: float
    """Prior mean pi_bar = exp(mean log pi_theta(y_t | s_t)) over the chunk."""
    pi_hat: float
    """Posterior mean pi_hat = (k_sem + alpha * pi_bar) / (N + alpha): the chunk's advantage in mode 'posterior'."""

    @property
    def k_sem_frac(self) -> float:
        """k_sem / N (N = the number of teacher samples scored)."""
        return self.k_sem / len(self.similarities) if self.similarities else 0.0


@dataclass
class ResponseAudit:
    """The audit of one response: its chunks in ascending order, plus what went wrong."""

    uid: str
    response_len: int
    chunks: list[ChunkAudit] = field(default_factory=list)
    anchors_dropped: int = 0
    """Anchors whose teacher samples failed after all retries (only with teacher.on_failure='drop')."""
    entropy_source: str = "exact"
    teacher: dict[str, float] = field(default_factory=dict)
    """This response's teacher accounting: calls, retries, failures, cache_hits, prompt_tokens,
    completion_tokens, cost_usd, seconds (summed over its anchors' TeacherResults)."""
