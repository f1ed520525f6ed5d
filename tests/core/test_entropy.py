"""Entropy: exact (chunked, float32) vs a float64 reference; top-k bounds bracket the exact value."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omniopd_verl.core import exact_entropy, topk_entropy
from omniopd_verl.errors import GuardError


def naive_entropy(logits_row):
    """-sum p log p in float64 from plain Python, one distribution."""
    xs = [float(x) for x in logits_row]
    m = max(xs)
    z = sum(math.exp(x - m) for x in xs)
    ps = [math.exp(x - m) / z for x in xs]
    return -sum(p * math.log(p) for p in ps if p > 0)


def test_exact_entropy_hand_worked():
    # uniform over 4 -> log 4; one-hot (very peaked) -> ~0; two equal of three with -inf -> log 2
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0], [1.0, 1.0, float("-inf"), float("-inf")]])
    h = exact_entropy(logits)
    assert h[0].item() == pytest.approx(math.log(4), abs=1e-6)
    assert h[1].item() == pytest.approx(0.0, abs=1e-6)
    assert h[2].item() == pytest.approx(math.log(2), abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3),
    t=st.integers(1, 7),
    v=st.integers(2, 40),
    chunk=st.integers(1, 9),
    scale=st.floats(0.1, 20.0),
    seed=st.integers(0, 10_000),
)
def test_exact_entropy_matches_float64_reference(b, t, v, chunk, scale, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g) * scale
    h = exact_entropy(logits.to(torch.bfloat16 if seed % 3 == 0 else torch.float32), chunk_size=chunk)
    assert h.shape == (b, t) and h.dtype == torch.float32
    src = logits.to(torch.bfloat16).float() if seed % 3 == 0 else logits
    for i in range(b):
        for j in range(t):
            assert h[i, j].item() == pytest.approx(naive_entropy(src[i, j]), abs=2e-4, rel=1e-4)


def test_exact_entropy_chunking_does_not_change_result_and_has_no_grad():
    logits = torch.randn(5, 11, 30, requires_grad=True)
    a = exact_entropy(logits, chunk_size=1)
    b = exact_entropy(logits, chunk_size=10_000)
    assert torch.equal(a, b)
    assert not a.requires_grad


@settings(max_examples=60, deadline=None)
@given(v=st.integers(3, 60), k=st.integers(1, 60), scale=st.floats(0.1, 15.0), seed=st.integers(0, 10_000))
def test_topk_bounds_bracket_exact(v, k, scale, seed):
    k = min(k, v)
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, v, generator=g, dtype=torch.float64) * scale
    logp = torch.log_softmax(logits, -1)
    top = logp.topk(k, dim=-1).values
    res = topk_entropy(top, vocab_size=v)
    exact = torch.tensor([naive_entropy(row) for row in logits], dtype=torch.float64)
    assert (res.lower.double() <= exact + 1e-4).all()
    assert (res.upper.double() >= exact - 1e-4).all()
    assert torch.equal(res.estimate, res.lower)
    if k == v:  # nothing unseen: both bounds collapse on the exact value
        assert torch.allclose(res.lower.double(), exact.double(), atol=1e-4)
        assert torch.allclose(res.upper.double(), exact.double(), atol=1e-4)


def test_topk_hand_worked_tail():
    # V = 4, top-2 probs 0.5, 0.3 -> tail 0.2 over 2 unseen tokens
    top = torch.log(torch.tensor([[0.5, 0.3]], dtype=torch.float64))
    res = topk_entropy(top, vocab_size=4)
    h_top = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3))
    assert res.tail_mass.item() == pytest.approx(0.2, abs=1e-6)
    assert res.lower.item() == pytest.approx(h_top + 0.2 * -math.log(0.3), abs=1e-5)
    assert res.upper.item() == pytest.approx(h_top + 0.2 * math.log(2 / 0.2), abs=1e-5)


def test_topk_guards():
    with pytest.raises(GuardError, match="vocab_size"):
        topk_entropy(torch.zeros(1, 5), vocab_size=3)
    with pytest.raises(GuardError, match="at least one"):
        topk_entropy(torch.zeros(2, 0), vocab_size=3)
