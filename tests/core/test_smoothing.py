"""Soft acceptance and the Dirichlet posterior mean, pinned against hand-worked numbers and properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omniopd_verl.core import chunk_pi_bar, dirichlet_posterior_mean, soft_acceptance
from omniopd_verl.errors import GuardError


def test_hand_worked_chunk_weight():
    # N = 4 teacher samples with similarities .9 .5 .0 1.0 -> k_sem = 2.4
    sims = torch.tensor([[0.9, 0.5, 0.0, 1.0]])
    k = soft_acceptance(sims, samples=4)
    assert k.item() == pytest.approx(2.4)
    # chunk token probs .5 .25 -> geometric mean sqrt(.125) = 0.35355
    lp = torch.log(torch.tensor([[0.5, 0.25]]))
    prior = chunk_pi_bar(lp)
    assert prior.item() == pytest.approx(math.sqrt(0.125), rel=1e-6)
    pi = dirichlet_posterior_mean(k, prior, samples=4, alpha=2.0)
    assert pi.item() == pytest.approx((2.4 + 2.0 * math.sqrt(0.125)) / 6.0, rel=1e-6)


def test_prior_mean_respects_mask():
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.001]]))
    mask = torch.tensor([[True, True, False]])
    assert chunk_pi_bar(lp, mask).item() == pytest.approx(math.sqrt(0.125), rel=1e-6)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 20),
    alpha=st.floats(1e-3, 50.0),
    frac=st.floats(0.0, 1.0),
    frac2=st.floats(0.0, 1.0),
    prior=st.floats(1e-6, 1.0 - 1e-6),
)
def test_posterior_in_open_unit_interval_and_monotone_in_k(n, alpha, frac, frac2, prior):
    k1, k2 = sorted([frac * n, frac2 * n])
    p = torch.tensor(prior, dtype=torch.float64)
    pi1 = dirichlet_posterior_mean(torch.tensor(k1, dtype=torch.float64), p, n, alpha).item()
    pi2 = dirichlet_posterior_mean(torch.tensor(k2, dtype=torch.float64), p, n, alpha).item()
    assert 0.0 < pi1 < 1.0 and 0.0 < pi2 < 1.0
    assert pi1 <= pi2
    assert pi1 == pytest.approx((k1 + alpha * prior) / (n + alpha), rel=1e-12)


def test_posterior_is_stop_gradient():
    lp = torch.log(torch.tensor([[0.5, 0.4]])).requires_grad_(True)
    prior = chunk_pi_bar(lp)
    pi = dirichlet_posterior_mean(torch.tensor([1.0]), prior, samples=2, alpha=1.0)
    assert not prior.requires_grad and not pi.requires_grad


def test_guards():
    with pytest.raises(GuardError, match="expected 3 teacher samples per chunk, got 2"):
        soft_acceptance(torch.ones(1, 2), samples=3)
    with pytest.raises(GuardError, match=r"\[0, 1\]"):
        soft_acceptance(torch.tensor([[1.5, 0.0]]))
    with pytest.raises(GuardError, match="k_sem"):
        dirichlet_posterior_mean(torch.tensor([3.0]), torch.tensor([0.5]), samples=2, alpha=1.0)
    with pytest.raises(GuardError, match="alpha"):
        dirichlet_posterior_mean(torch.tensor([1.0]), torch.tensor([0.5]), samples=2, alpha=0.0)
    with pytest.raises(GuardError, match="prior"):
        dirichlet_posterior_mean(torch.tensor([1.0]), torch.tensor([1.5]), samples=2, alpha=1.0)
    with pytest.raises(GuardError, match="logits instead of log-probs"):
        chunk_pi_bar(torch.tensor([[2.0, 1.0]]))
