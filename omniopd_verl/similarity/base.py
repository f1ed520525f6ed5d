"""The similarity protocol (defined in `omniopd_verl.protocols`) and the shared empty-text convention."""

from __future__ import annotations

from omniopd_verl.protocols import Similarity

__all__ = ["Similarity", "empty_pair_score"]


def empty_pair_score(a: str, b: str) -> float | None:
    """Shared convention for empty texts: two empty texts agree (1.0), one empty text disagrees (0.0)."""
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    return None
