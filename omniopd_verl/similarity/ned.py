"""`ned`: 1 - Levenshtein(a, b) / max(|a|, |b|) on characters, via rapidfuzz's C++ implementation."""

from __future__ import annotations

from collections.abc import Sequence

from omniopd_verl.similarity.base import empty_pair_score


class NormalizedEditSimilarity:
    name = "ned"

    def __init__(self) -> None:
        from rapidfuzz.distance import Levenshtein

        self._levenshtein = Levenshtein

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        out = []
        for a, b in pairs:
            special = empty_pair_score(a, b)
            # unit-cost Levenshtein normalised by max(len): exactly the spec's formula
            out.append(special if special is not None else float(self._levenshtein.normalized_similarity(a, b)))
        return out
