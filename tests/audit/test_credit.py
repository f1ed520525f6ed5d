"""The one audits -> advantage path (advantage_from_audits, and its per-row part audits_to_token_credit)
against naive per-token loops, in all three advantage modes."""

from __future__ import annotations

import pytest
import torch

from omniopd_verl.advantage import advantage_from_audits
from omniopd_verl.audit import ChunkAudit, ResponseAudit, audits_to_token_credit, chunk_advantages
from omniopd_verl.errors import ConfigError, GuardError


def chunk(start, end, weight, prior):
    return ChunkAudit(start, end, None, "s", ["t"], [0.5], 0.5, prior, weight)


AUDITS = [
    ResponseAudit("a", 10, [chunk(0, 3, 0.8, 0.4), chunk(5, 8, 0.2, 0.6)]),
    ResponseAudit("b", 4, []),  # too short: KL only
    ResponseAudit("c", 7, [chunk(4, 7, 0.5, 0.1)]),
]


def mask(lengths, T=12):
    return torch.tensor([[1] * n + [0] * (T - n) for n in lengths])


@pytest.mark.parametrize("mode", ["posterior", "centered_prior", "centered_batch"])
def test_token_credit_matches_naive_loops(mode):
    m = mask([10, 4, 7])
    advantage_BT, credit = advantage_from_audits(AUDITS, m, mode)
    batch_mean = (0.8 + 0.2 + 0.5) / 3
    for b, a in enumerate(AUDITS):
        for t in range(12):
            owner = [c for c in a.chunks if c.start <= t < c.end]
            expected = 0.0
            if owner:
                c = owner[0]
                expected = {
                    "posterior": c.pi_hat,
                    "centered_prior": c.pi_hat - c.pi_bar,
                    "centered_batch": c.pi_hat - batch_mean,
                }[mode]
            assert advantage_BT[b, t].item() == pytest.approx(expected, abs=1e-6)
            assert credit.audit_mask_BT[b, t].item() == bool(owner)
            assert credit.unaudited_mask_BT[b, t].item() == (t < a.response_len and not owner)
    if mode != "centered_batch":  # per-row modes: the per-row part alone gives the same values
        assert chunk_advantages(AUDITS, mode)[1] == []
        assert torch.equal(audits_to_token_credit(AUDITS, m, mode).advantage_BT, advantage_BT)


def test_bad_inputs_are_named():
    with pytest.raises(GuardError, match="row 2 \\('c'\\): audited response length 7 != mask length 6"):
        audits_to_token_credit(AUDITS, mask([10, 4, 6]))
    with pytest.raises(GuardError, match="B = 3"):
        audits_to_token_credit(AUDITS, mask([10, 4]))
    with pytest.raises(ConfigError, match="omniopd.advantage='centred'"):
        chunk_advantages(AUDITS, "centred")
    with pytest.raises(ConfigError, match="omniopd.advantage='centred'"):
        advantage_from_audits(AUDITS, mask([10, 4, 7]), "centred")
    with pytest.raises(ConfigError, match="batch mode"):
        chunk_advantages(AUDITS, "centered_batch")
    overlap = [ResponseAudit("x", 10, [chunk(0, 4, 0.5, 0.5), chunk(3, 6, 0.5, 0.5)])]
    with pytest.raises(GuardError, match="overlap"):
        audits_to_token_credit(overlap, mask([10]))
