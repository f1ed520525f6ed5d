"""Schedulers vs a naive re-statement of ALGORITHM.md step 2, plus properties."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omniopd_naive import naive_peak_anchors

from omniopd_verl.core import (
    all_positions_anchors,
    check_anchors,
    peak_entropy_anchors,
    random_anchors,
    uniform_anchors,
)
from omniopd_verl.errors import GuardError


def test_peak_hand_worked():
    # T=10, C=3: the peak at 5 wins, then 1 (entropy 0.8); 3 is too close to 5 and to 1
    h = torch.tensor([0.1, 0.8, 0.2, 0.7, 0.0, 0.9, 0.3, 0.1, 0.0, 0.0])
    assert peak_entropy_anchors(h, 10, 10, 3) == [1, 5]
    assert peak_entropy_anchors(h, 10, 1, 3) == [5]
    # position 8 cannot open a chunk (8 + 3 > 10) however high its entropy
    h2 = torch.zeros(10)
    h2[8] = 5.0
    assert 8 not in peak_entropy_anchors(h2, 10, 10, 3)


def test_peak_ties_go_to_larger_position():
    h = torch.ones(10)
    # all equal: larger t first -> 7 (last candidate), then 4, then 1
    assert peak_entropy_anchors(h, 10, 10, 3) == [1, 4, 7]
    assert peak_entropy_anchors(h, 10, 1, 3) == [7]


def test_short_response_gets_no_anchor():
    assert peak_entropy_anchors(torch.ones(4), 4, 10, 5) == []
    assert uniform_anchors(4, 10, 5) == []
    assert random_anchors(4, 10, 5, seed=0) == []
    assert all_positions_anchors(4, 5) == []


@settings(max_examples=150, deadline=None)
@given(
    T=st.integers(0, 60),
    pad=st.integers(0, 5),
    M=st.integers(1, 8),
    C=st.integers(1, 12),
    values=st.lists(st.integers(0, 4), min_size=65, max_size=65),
)
def test_peak_matches_naive_and_properties(T, pad, M, C, values):
    # few distinct values -> many ties, the hard case
    h = torch.tensor(values[: T + pad], dtype=torch.float32)
    got = peak_entropy_anchors(h, T, M, C)
    assert got == naive_peak_anchors(values, T, M, C)
    check_anchors(got, T, C, M)  # non-overlapping, <= M, inside the response
    assert all(t + C <= T for t in got)


@settings(max_examples=150, deadline=None)
@given(T=st.integers(0, 200), M=st.integers(1, 12), C=st.integers(1, 30), seed=st.integers(0, 10**6))
def test_baselines_properties(T, M, C, seed):
    for anchors in (uniform_anchors(T, M, C), random_anchors(T, M, C, seed=seed)):
        check_anchors(anchors, T, C, M)
        assert len(anchors) == min(M, T // C)
    tiled = all_positions_anchors(T, C)
    check_anchors(tiled, T, C)
    assert len(tiled) == T // C
    assert random_anchors(T, M, C, seed=seed) == random_anchors(T, M, C, seed=seed)


def test_uniform_spreads_to_the_end():
    assert uniform_anchors(100, 3, 10) == [0, 45, 90]


def test_random_covers_all_placements():
    # T=5, C=2, M=2: non-overlapping placements are (0,2),(0,3),(1,3)
    seen = {tuple(random_anchors(5, 2, 2, seed=s)) for s in range(200)}
    assert seen == {(0, 2), (0, 3), (1, 3)}


def test_guards():
    with pytest.raises(GuardError, match="needs per-token entropies"):
        peak_entropy_anchors(None, 10, 2, 3)
    with pytest.raises(GuardError, match="entropy length 5 != response length 10"):
        peak_entropy_anchors(torch.ones(5), 10, 2, 3)
    with pytest.raises(GuardError, match="NaN"):
        peak_entropy_anchors(torch.tensor([float("nan")] * 5), 5, 2, 3)
    with pytest.raises(GuardError, match="chunks"):
        uniform_anchors(10, 0, 3)
    with pytest.raises(GuardError, match="overlaps"):
        check_anchors([0, 2], 10, 3)
    with pytest.raises(GuardError, match="outside the response"):
        check_anchors([8], 10, 3)
    with pytest.raises(GuardError, match="exceed"):
        check_anchors([0, 3, 6], 10, 3, chunks=2)
