"""Anchor scheduling: which chunks of a response get audited (ALGORITHM.md step 2).

Every function takes one response and returns anchor starts in ascending order; chunk k is
y[t_k : t_k + chunk_len]. A response shorter than chunk_len gets no anchor (it is KL-anchored only).
Anchors never overlap and never leave the response; `check_anchors` is the guard for all of them.
"""

from __future__ import annotations

import random as _random
from collections.abc import Sequence

import torch

from omniopd_verl.errors import GuardError


def _check_sizes(response_len: int, chunks: int, chunk_len: int) -> None:
    if response_len < 0:
        raise GuardError(f"response_len must be >= 0, got {response_len}")
    if chunks < 1:
        raise GuardError(f"chunks (M) must be >= 1, got {chunks}")
    if chunk_len < 1:
        raise GuardError(f"chunk_len (C) must be >= 1, got {chunk_len}")


def peak_entropy_anchors(entropy_T: torch.Tensor | None, response_len: int, chunks: int, chunk_len: int) -> list[int]:
    """Greedy non-overlapping peak-entropy anchors, exactly as ALGORITHM.md step 2 specifies.

    Candidates are t with t + C <= T. They are visited by entropy descending, ties to the larger t;
    t is accepted when it is at least C away from every accepted start; the walk stops at M anchors.
    `entropy_T` may be longer than `response_len` (padding is ignored) but never shorter.
    """
    _check_sizes(response_len, chunks, chunk_len)
    if entropy_T is None:
        raise GuardError("peak_entropy scheduler needs per-token entropies, but none were given")
    if entropy_T.dim() != 1:
        raise GuardError(f"entropy must be one row [T], got shape {tuple(entropy_T.shape)}")
    if entropy_T.shape[0] < response_len:
        raise GuardError(f"entropy length {entropy_T.shape[0]} != response length {response_len}")
    n_candidates = response_len - chunk_len + 1
    if n_candidates <= 0:
        return []
    h = entropy_T[:n_candidates].detach().double().cpu()
    if not torch.isfinite(h).all():
        raise GuardError("entropy contains NaN or inf inside the response")
    # Sort by (entropy desc, position desc): a stable sort of the reversed positions by -h gives
    # "larger t first" among equal entropies.
    positions = torch.arange(n_candidates - 1, -1, -1)
    order = torch.sort(-h[positions], stable=True).indices
    accepted: list[int] = []
    for t in positions[order].tolist():
        if all(abs(t - s) >= chunk_len for s in accepted):
            accepted.append(t)
            if len(accepted) == chunks:
                break
    return sorted(accepted)


def uniform_anchors(response_len: int, chunks: int, chunk_len: int) -> list[int]:
    """min(M, T // C) non-overlapping anchors spread evenly from 0 to T - C (baseline)."""
    _check_sizes(response_len, chunks, chunk_len)
    m = min(chunks, response_len // chunk_len)
    if m == 0:
        return []
    if m == 1:
        return [0]
    span = response_len - chunk_len
    # integer spacing >= C because m * C <= T; floor keeps that (see tests)
    return [k * span // (m - 1) for k in range(m)]


def random_anchors(response_len: int, chunks: int, chunk_len: int, *, seed: int) -> list[int]:
    """min(M, T // C) non-overlapping anchors drawn uniformly among all such placements (baseline).

    Stars and bars: draw m sorted distinct u from range(T - m*C + m) and set t_i = u_i + i*(C - 1).
    Deterministic for a given seed.
    """
    _check_sizes(response_len, chunks, chunk_len)
    m = min(chunks, response_len // chunk_len)
    if m == 0:
        return []
    rng = _random.Random(seed)
    u = sorted(rng.sample(range(response_len - m * chunk_len + m), m))
    return [u_i + i * (chunk_len - 1) for i, u_i in enumerate(u)]


def all_positions_anchors(response_len: int, chunk_len: int) -> list[int]:
    """Every full chunk, tiled back to back from 0: the dense "audit everything" baseline (no M cap)."""
    _check_sizes(response_len, 1, chunk_len)
    return list(range(0, response_len - chunk_len + 1, chunk_len))


def check_anchors(anchors: Sequence[int], response_len: int, chunk_len: int, chunks: int | None = None) -> None:
    """Guard: anchors are ints, ascending, inside the response, non-overlapping, and at most M."""
    if chunks is not None and len(anchors) > chunks:
        raise GuardError(f"{len(anchors)} anchors exceed chunks (M) = {chunks}")
    prev_end = 0
    for t in anchors:
        if not isinstance(t, int) or isinstance(t, bool):
            raise GuardError(f"anchor {t!r} is not an int")
        if t < 0 or t + chunk_len > response_len:
            raise GuardError(f"anchor {t} with chunk_len {chunk_len} is outside the response [0, {response_len})")
        if t < prev_end:
            raise GuardError(f"anchor {t} overlaps the previous chunk (which ends at {prev_end}) or is out of order")
        prev_end = t + chunk_len
