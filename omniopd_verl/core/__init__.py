"""The OmniOPD algorithm as pure functions on tensors (ALGORITHM.md steps 2, 4, 5, 6).

Imports torch only: no verl, ray, network or files, so both engines and every test can share it.
"""

from omniopd_verl.core.acceptance import soft_acceptance
from omniopd_verl.core.credit import TokenCredit, chunk_token_credit
from omniopd_verl.core.entropy import TopKEntropy, exact_entropy, topk_entropy
from omniopd_verl.core.scheduling import (
    all_positions_anchors,
    check_anchors,
    peak_entropy_anchors,
    random_anchors,
    uniform_anchors,
)
from omniopd_verl.core.smoothing import chunk_pi_bar, dirichlet_posterior_mean

__all__ = [
    "TokenCredit",
    "TopKEntropy",
    "all_positions_anchors",
    "check_anchors",
    "chunk_pi_bar",
    "chunk_token_credit",
    "dirichlet_posterior_mean",
    "exact_entropy",
    "peak_entropy_anchors",
    "random_anchors",
    "soft_acceptance",
    "topk_entropy",
    "uniform_anchors",
]
