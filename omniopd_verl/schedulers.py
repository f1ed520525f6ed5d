"""Built-in scheduler plugins (entry-point group `omniopd_verl.schedulers`).

A scheduler picks a response's anchors. The protocol is one method; the algorithms live in
`omniopd_verl.core.scheduling` as pure functions. Third-party schedulers implement the same protocol
and register an entry point; see plugins/omniopd-example-plugin.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from omniopd_verl.core import scheduling


@runtime_checkable
class Scheduler(Protocol):
    """Chooses anchor starts for one response. Must return ascending, non-overlapping, in-range anchors."""

    needs_entropy: bool  # True: `entropy_T` is required; the auditor refuses to call without it
    # Optional attribute `respects_chunks = False` declares that the scheduler ignores M (a dense
    # baseline); the auditor then checks anchors without the M cap. Absent means True. (Not a protocol
    # member, so plugins that omit it still satisfy isinstance(x, Scheduler).)

    def select(
        self, entropy_T: torch.Tensor | None, response_len: int, chunks: int, chunk_len: int, *, seed: int
    ) -> list[int]: ...


class PeakEntropyScheduler:
    """The paper's scheduler: greedy non-overlapping chunks at the highest-entropy forks."""

    needs_entropy = True

    def select(self, entropy_T, response_len, chunks, chunk_len, *, seed):
        return scheduling.peak_entropy_anchors(entropy_T, response_len, chunks, chunk_len)


class UniformScheduler:
    """Baseline: min(M, T // C) chunks spread evenly over the response."""

    needs_entropy = False

    def select(self, entropy_T, response_len, chunks, chunk_len, *, seed):
        return scheduling.uniform_anchors(response_len, chunks, chunk_len)


class RandomScheduler:
    """Baseline: min(M, T // C) non-overlapping chunks placed uniformly at random (seeded per sample)."""

    needs_entropy = False

    def select(self, entropy_T, response_len, chunks, chunk_len, *, seed):
        return scheduling.random_anchors(response_len, chunks, chunk_len, seed=seed)


class AllPositionsScheduler:
    """Baseline: audit every full chunk, tiled from position 0 (ignores M; costs T // C audits)."""

    needs_entropy = False
    respects_chunks = False

    def select(self, entropy_T, response_len, chunks, chunk_len, *, seed):
        return scheduling.all_positions_anchors(response_len, chunk_len)
