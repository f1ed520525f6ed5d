"""Naive reference implementations the tests compare against: plain Python, written from ALGORITHM.md.

Deliberately slow and obvious, and independent of the code under test (no rapidfuzz, no torch).
Importable from any test module as `omniopd_naive` (tests/conftest.py puts this folder on sys.path;
the name avoids verl's top-level `tests` package).
"""


def levenshtein(a, b) -> int:
    """Unit-cost edit distance by the textbook dynamic programme; works on strings or token lists."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def naive_ned(a: str, b: str) -> float:
    """ALGORITHM.md's `ned`: 1 - Levenshtein / max length; two empty texts agree, one empty disagrees."""
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    return 1.0 - levenshtein(a, b) / max(len(a), len(b))


def naive_peak_anchors(h, T: int, m: int, c: int) -> list[int]:
    """ALGORITHM.md step 2, literally: candidates t + C <= T by (entropy desc, t desc), >= C apart, stop at M."""
    cands = sorted(range(T - c + 1), key=lambda t: (-h[t], -t))
    acc: list[int] = []
    for t in cands:
        if len(acc) == m:
            break
        if all(abs(t - s) >= c for s in acc):
            acc.append(t)
    return sorted(acc)
