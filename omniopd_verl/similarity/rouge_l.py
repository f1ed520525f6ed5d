"""`rouge_l`: word-level ROUGE-L F1 = 2PR / (P + R) with P = LCS/|b|, R = LCS/|a|.

Tokens are lower-cased runs of word characters plus single punctuation/operator characters, so that
math like "x+1=3" keeps its operators (the classic rouge tokenizer would drop them). The LCS runs in
rapidfuzz's C++ LCSseq over token lists.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from omniopd_verl.similarity.base import empty_pair_score

_TOKEN = re.compile(r"\w+|[^\w\s]")


def rouge_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class RougeLSimilarity:
    name = "rouge_l"

    def __init__(self) -> None:
        from rapidfuzz.distance import LCSseq

        self._lcs = LCSseq

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        out = []
        for a, b in pairs:
            ta, tb = rouge_tokens(a), rouge_tokens(b)
            special = empty_pair_score(" ".join(ta), " ".join(tb))
            if special is not None:
                out.append(special)
                continue
            lcs = self._lcs.similarity(ta, tb)
            if lcs == 0:
                out.append(0.0)
                continue
            p, r = lcs / len(tb), lcs / len(ta)
            out.append(2 * p * r / (p + r))
        return out
