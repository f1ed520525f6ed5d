"""`jaccard` similarity: size of the intersection over size of the union of lower-cased word sets."""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"\w+")


class JaccardSimilarity:
    name = "jaccard"

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        out = []
        for a, b in pairs:
            wa, wb = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
            union = wa | wb
            out.append(1.0 if not union else len(wa & wb) / len(union))
        return out
