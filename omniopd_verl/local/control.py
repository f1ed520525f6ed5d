"""The control arm: the teacher's signal removed, everything else identical (`local.control`).

'shuffle_pi_hat' permutes the audited chunks' (pi_hat, pi_bar) pairs across the whole batch with a
seeded permutation before credit assignment. The rollout, the teacher calls, the chunk positions, the
number of audited tokens, the KL anchor and the distribution of advantages stay exactly what they are
in the real arm; only WHICH chunk gets which teacher judgement is random, so a held-out move toward the
teacher in this arm is what the method would show with a teacher that carries no information.
(pi_bar travels with pi_hat so that 'centered_prior' advantages are permuted too, not recomputed
against another chunk's prior.)
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from omniopd_verl.audit.types import ResponseAudit


def shuffle_pi_hat(audits: Sequence[ResponseAudit], seed: int) -> list[ResponseAudit]:
    """New audits whose chunks carry a seeded permutation of the batch's (pi_hat, pi_bar) pairs."""
    pairs = [(c.pi_hat, c.pi_bar) for a in audits for c in a.chunks]
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    shuffled = iter([pairs[i] for i in order])
    out = []
    for a in audits:
        chunks = []
        for c in a.chunks:
            pi_hat, pi_bar = next(shuffled)
            chunks.append(dataclasses.replace(c, pi_hat=pi_hat, pi_bar=pi_bar))
        out.append(dataclasses.replace(a, chunks=chunks))
    return out
