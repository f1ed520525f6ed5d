"""Chunk -> token tensors on a padded batch, against a naive loop."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omniopd_verl.core import chunk_token_credit
from omniopd_verl.errors import GuardError


def naive_credit(chunks_per_row, lengths, T):
    adv = [[0.0] * T for _ in lengths]
    audited = [[False] * T for _ in lengths]
    for b, chunks in enumerate(chunks_per_row):
        for s, e, w in chunks:
            for t in range(s, e):
                adv[b][t] = w
                audited[b][t] = True
    unaudited = [[(t < lengths[b]) and not audited[b][t] for t in range(T)] for b in range(len(lengths))]
    return torch.tensor(adv), torch.tensor(audited), torch.tensor(unaudited)


def pack(chunks_per_row, M):
    B = len(chunks_per_row)
    starts = torch.full((B, M), -1, dtype=torch.long)
    ends = torch.full((B, M), -1, dtype=torch.long)
    weights = torch.zeros(B, M)
    for b, chunks in enumerate(chunks_per_row):
        for m, (s, e, w) in enumerate(chunks):
            starts[b, m], ends[b, m], weights[b, m] = s, e, w
    return starts, ends, weights


def test_hand_worked_padded_batch():
    # row 0: length 6, chunk [1, 3) weight .5 ; row 1: length 3, no chunk (padding after)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    starts, ends, weights = pack([[(1, 3, 0.5)], []], 1)
    credit = chunk_token_credit(starts, ends, weights, mask)
    assert credit.advantage_BT.tolist() == [[0, 0.5, 0.5, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
    assert credit.unaudited_mask_BT.tolist() == [[1, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0]]


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_matches_naive(data):
    B = data.draw(st.integers(1, 4))
    T = data.draw(st.integers(1, 30))
    C = data.draw(st.integers(1, 6))
    rows, lengths = [], []
    for _ in range(B):
        L = data.draw(st.integers(0, T))
        starts = sorted(data.draw(st.sets(st.integers(0, max(0, L - C)), max_size=5))) if L >= C else []
        chunks, prev_end = [], 0
        for s in starts:
            if s >= prev_end:
                chunks.append((s, s + C, data.draw(st.floats(0.0, 1.0))))
                prev_end = s + C
        rows.append(chunks)
        lengths.append(L)
    mask = torch.tensor([[1 if t < L else 0 for t in range(T)] for L in lengths])
    M = max(1, max(len(r) for r in rows))
    credit = chunk_token_credit(*pack(rows, M), mask)
    adv, audited, unaudited = naive_credit(rows, lengths, T)
    assert torch.allclose(credit.advantage_BT, adv)
    assert torch.equal(credit.audit_mask_BT, audited)
    assert torch.equal(credit.unaudited_mask_BT, unaudited)


def test_guards():
    mask = torch.ones(1, 10)
    with pytest.raises(GuardError, match="overlap"):
        chunk_token_credit(*pack([[(0, 4, 0.5), (3, 6, 0.5)]], 2), mask)
    with pytest.raises(GuardError, match="outside the response"):
        chunk_token_credit(*pack([[(8, 12, 0.5)]], 1), mask)
    with pytest.raises(GuardError, match=r"\[0, 1\]"):
        chunk_token_credit(*pack([[(0, 4, 1.5)]], 1), mask)
    s, e, w = pack([[(0, 4, 0.5)]], 1)
    with pytest.raises(GuardError, match="stop-gradient"):
        chunk_token_credit(s, e, w.requires_grad_(True), mask)
