"""chunk_advantages / audits_to_token_credit against naive per-token loops, in all three advantage modes."""

from __future__ import annotations

import pytest
import torch

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
    credit = audits_to_token_credit(AUDITS, m, mode)
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
            assert credit.advantage_BT[b, t].item() == pytest.approx(expected, abs=1e-6)
            assert credit.audit_mask_BT[b, t].item() == bool(owner)
            assert credit.unaudited_mask_BT[b, t].item() == (t < a.response_len and not owner)
    assert chunk_advantages(AUDITS, mode)[1] == []


def test_bad_inputs_are_named():
    with pytest.raises(GuardError, match="row 2 \\('c'\\): audited response length 7 != mask length 6"):
        audits_to_token_credit(AUDITS, mask([10, 4, 6]))
    with pytest.raises(GuardError, match="B = 3"):
        audits_to_token_credit(AUDITS, mask([10, 4]))
    with pytest.raises(ConfigError, match="omniopd.advantage='centred'"):
        chunk_advantages(AUDITS, "centred")
    overlap = [ResponseAudit("x", 10, [chunk(0, 4, 0.5, 0.5), chunk(3, 6, 0.5, 0.5)])]
    with pytest.raises(GuardError, match="overlap"):
        audits_to_token_credit(overlap, mask([10]))
