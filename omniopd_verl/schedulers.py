"""Built-in scheduler plugins (entry-point group `omniopd_verl.schedulers`).

A scheduler picks a response's anchors. The protocol (`omniopd_verl.protocols.Scheduler`) is one method; the algorithms live in
`omniopd_verl.core.scheduling` as pure functions. Third-party schedulers implement the same protocol
and register an entry point; see plugins/omniopd-example-plugin.
"""

from __future__ import annotations

from omniopd_verl.core import scheduling
from omniopd_verl.protocols import Scheduler

__all__ = ["AllPositionsScheduler", "PeakEntropyScheduler", "RandomScheduler", "Scheduler", "UniformScheduler"]


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
