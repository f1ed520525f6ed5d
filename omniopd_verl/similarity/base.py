"""The similarity protocol: one batched call over all (student chunk, teacher sample) pairs of a batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Similarity(Protocol):
    """phi for many pairs at once. Returns one float in [0, 1] per pair, in order.

    Called once per batch with every pair, so implementations can batch and de-duplicate.
    """

    name: str

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]: ...


def empty_pair_score(a: str, b: str) -> float | None:
    """Shared convention for empty texts: two empty texts agree (1.0), one empty text disagrees (0.0)."""
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    return None
