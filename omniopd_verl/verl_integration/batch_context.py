"""The batch's audited-token mask, handed from the OmniOPD trainer modes to the `omniopd` estimator.

verl's `compute_advantage` passes an estimator only name-gated keyword arguments, so for
advantage='centered_batch' the trainer modes (trainers.py) read the per-token audit masks from
TransferQueue, set them here for the duration of verl's `_compute_advantage`, and the estimator
reads them when verl passed no `audit_mask` itself.
"""

from __future__ import annotations

from contextvars import ContextVar

import torch

BATCH_AUDIT_MASK: ContextVar[torch.Tensor | None] = ContextVar("omniopd_batch_audit_mask", default=None)
