"""One optimizer step of the local engine: micro-batched forward/backward, gradient clipping, AdamW.

Kept apart from the trainer so that benchmarks and tests can drive exactly the code a run uses.
Per micro-batch: the frozen reference's logits (timed as "reference", no grad), the student's logits,
`omniopd_loss` (verl's policy loss + the exact KL), backward (timed as "update"). verl's agg_loss is
given the whole batch's sequence and token counts, so micro-batch gradients SUM to the batch gradient.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager

import torch

from omniopd_verl.core import TokenCredit
from omniopd_verl.local.loss import collate, omniopd_loss, reference_terms, response_logits


class Timer:
    """Accumulates wall-clock seconds per named stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def policy_update(
    model,
    ref_model,
    optimizer,
    actor_config,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    credit: TokenCredit,
    *,
    beta: float,
    micro_batch_size: int,
    grad_clip: float,
    pad_token_id: int,
    timer: Timer | None = None,
) -> dict[str, float]:
    """Accumulate the gradient of L_chunk + beta * L_KL over the batch, clip it, take one AdamW step.

    `credit` rows are aligned with the responses (left-aligned, verl's layout).
    """
    timer = timer or Timer()
    device = next(model.parameters()).device
    B = len(response_ids)
    lengths = [len(r) for r in response_ids]
    n_seqs = sum(n > 0 for n in lengths)
    n_tokens = sum(lengths)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    totals = {"loss/objective": 0.0, "loss/l_chunk": 0.0, "loss/l_kl": 0.0}
    policy: dict[str, float] = {}
    for lo in range(0, B, micro_batch_size):
        sl = slice(lo, lo + micro_batch_size)
        micro = collate(prompt_ids[sl], response_ids[sl], pad_token_id).to(device)
        T = micro.response_ids_BT.shape[1]
        with timer("reference"), torch.no_grad():
            ref = reference_terms(response_logits(ref_model, micro))
        with timer("update"):
            logits = response_logits(model, micro)
            terms = omniopd_loss(
                logits,
                ref,
                micro.response_ids_BT,
                credit.advantage_BT[sl, :T].to(device),
                micro.response_mask_BT,
                credit.unaudited_mask_BT[sl, :T].to(device),
                beta=beta,
                actor_config=actor_config,
                global_batch_size=n_seqs,
                batch_num_tokens=n_tokens,
            )
            terms.objective.backward()
        del ref, logits
        totals["loss/objective"] += float(terms.objective.detach())
        totals["loss/l_chunk"] += float(terms.l_chunk)
        totals["loss/l_kl"] += float(terms.l_kl)
        share = (min(lo + micro_batch_size, B) - lo) / B
        for k, v in terms.policy_metrics.items():
            policy[k] = policy.get(k, 0.0) + float(v) * share
    with timer("update"):
        clip = grad_clip if grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {
        **totals,
        "loss/beta_l_kl": beta * totals["loss/l_kl"],
        "train/grad_norm": float(grad_norm),
        "train/tokens": float(n_tokens),
        **policy,
    }
