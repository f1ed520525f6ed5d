"""The local engine's objective: verl's own policy loss for L_chunk plus the EXACT KL anchor (ALGORITHM.md 6-7).

L = L_chunk + beta * L_KL, per sequence, aggregated by verl's `agg_loss` (`seq-mean-token-sum` by default):
- L_chunk = -sum_k pi_hat_k sum_{t in c_k} log pi_theta(y_t | s_t). It enters as verl's policy loss
  (`core_algos.get_policy_loss_fn("vanilla")`) with the advantage pi_hat on chunk tokens, 0 elsewhere.
  The local engine makes one update per rollout, so pi_old = pi_theta and the ratio is exactly 1:
  the surrogate's VALUE is -sum A (not -sum A log pi) but its GRADIENT is exactly that of L_chunk, and the
  clip never engages. The spec's value of L_chunk is reported separately (`l_chunk`).
- L_KL = sum_{t unaudited} KL(pi_ref(.|s_t) || pi_theta(.|s_t)), exact over the whole vocabulary in
  float32, against a frozen copy of the initial student; audited tokens contribute exactly 0. This is
  what stock verl cannot do (its reference worker returns sampled-token log-probs only).

Speed and precision: KL_t = sum_v p_ref (ref_logits - logits) - lse_ref + lse (as sum_v p_ref = 1).
p_ref and lse_ref need no gradient and come from the reference stage (`reference_terms`); the update
needs one logsumexp and one weighted sum of logit differences per position forward and one fused pass
backward (`_LogprobAndKL`): the same vocabulary-sized work as a cross-entropy.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class TrainBatch:
    """Padded token tensors for the update, verl's layout: left-padded prompts, right-padded responses."""

    input_ids_BL: torch.Tensor
    attention_mask_BL: torch.Tensor
    position_ids_BL: torch.Tensor
    response_ids_BT: torch.Tensor
    response_mask_BT: torch.Tensor
    prompt_len: int  # P: response token t sits at sequence position P + t

    def to(self, device) -> TrainBatch:
        return TrainBatch(
            *(
                getattr(self, f).to(device)
                for f in ("input_ids_BL", "attention_mask_BL", "position_ids_BL", "response_ids_BT", "response_mask_BT")
            ),
            prompt_len=self.prompt_len,
        )


def collate(
    prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_token_id: int
) -> TrainBatch:
    """[pad.. prompt | response ..pad]: every response starts at column P, so [B, T] tensors line up."""
    if len(prompt_ids) != len(response_ids) or not prompt_ids:
        raise ValueError(
            f"need one response per prompt and at least one row, got {len(prompt_ids)} / {len(response_ids)}"
        )
    P = max(len(p) for p in prompt_ids)
    T = max(len(r) for r in response_ids)
    B = len(prompt_ids)
    ids_BL = torch.full((B, P + T), pad_token_id, dtype=torch.long)
    mask_BL = torch.zeros((B, P + T), dtype=torch.long)
    resp_BT = torch.full((B, T), pad_token_id, dtype=torch.long)
    rmask_BT = torch.zeros((B, T), dtype=torch.float32)
    for b, (p, r) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        ids_BL[b, P - len(p) : P] = torch.tensor(list(p), dtype=torch.long)
        ids_BL[b, P : P + len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask_BL[b, P - len(p) : P + len(r)] = 1
        resp_BT[b, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        rmask_BT[b, : len(r)] = 1.0
    position_ids_BL = (mask_BL.cumsum(-1) - 1).clamp(min=0)
    return TrainBatch(ids_BL, mask_BL, position_ids_BL, resp_BT, rmask_BT, P)


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def response_logits(model, batch: TrainBatch) -> torch.Tensor:
    """Logits predicting each response token, [B, T, V] (position P-1+t predicts y_t).

    Responses are right-padded, so the last T+1 positions cover them: `logits_to_keep` spares the LM
    head (the largest matmul for a 49k-150k vocabulary) on the prompt.
    """
    T = batch.response_ids_BT.shape[1]
    kwargs = {"logits_to_keep": T + 1} if _accepts_logits_to_keep(model) else {}
    logits = model(
        input_ids=batch.input_ids_BL,
        attention_mask=batch.attention_mask_BL,
        position_ids=batch.position_ids_BL,
        use_cache=False,
        **kwargs,
    ).logits
    return logits[:, -(T + 1) : -1, :]


def exact_kl_BT(ref_logits_BTV: torch.Tensor, logits_BTV: torch.Tensor) -> torch.Tensor:
    """KL(pi_ref || pi_theta) = sum_v p_ref (log p_ref - log p_theta) per position, float32, [B, T].

    Gradient flows through `logits_BTV` only; the reference is detached.
    """
    ref_logp = torch.log_softmax(ref_logits_BTV.detach().float(), dim=-1)
    logp = torch.log_softmax(logits_BTV.float(), dim=-1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(dim=-1)


@dataclass
class ReferenceTerms:
    """What the KL needs from pi_ref, computed once without gradient: its logits, p_ref and logsumexp."""

    logits_BTV: torch.Tensor
    probs_BTV: torch.Tensor
    lse_BT: torch.Tensor


@torch.no_grad()
def reference_terms(ref_logits_BTV: torch.Tensor) -> ReferenceTerms:
    logits = ref_logits_BTV.float()
    lse = torch.logsumexp(logits, dim=-1)
    return ReferenceTerms(logits_BTV=logits, probs_BTV=torch.sub(logits, lse.unsqueeze(-1)).exp_(), lse_BT=lse)


class _LogprobAndKL(torch.autograd.Function):
    """(log p(y_t), KL(p_ref || p)) per position from the student's logits, with one fused backward pass.

    Forward: lse = logsumexp(logits); log p(y) = logits[y] - lse;
             KL = sum_v p_ref (ref_logits - logits) - lse_ref + lse.
    The KL is summed over DIFFERENCES of logits, which are small where p_ref has its mass: a form such as
    sum p_ref log p_ref - sum p_ref logits + lse cancels numbers of ~30 in float32 and was off by
    5e-5..3e-3 nat/token on real SmolLM2 logits (3e-3 with einsum's CPU path); this one is exact to ~1e-6.
    Backward: d/dlogits = g_lp * (onehot_y - softmax) + g_kl * (softmax - p_ref), written into one buffer
    in place: the same vocabulary-sized work as a cross-entropy's backward.
    """

    @staticmethod
    def forward(ctx, logits_BTV, ids_BT, ref_logits_BTV, probs_BTV, ref_lse_BT):
        lse_BT = torch.logsumexp(logits_BTV, dim=-1)
        logprob_BT = logits_BTV.gather(-1, ids_BT.unsqueeze(-1)).squeeze(-1) - lse_BT
        diff = torch.sub(ref_logits_BTV, logits_BTV).mul_(probs_BTV)
        kl_BT = diff.sum(dim=-1) - ref_lse_BT + lse_BT
        del diff
        ctx.save_for_backward(logits_BTV, ids_BT, probs_BTV, lse_BT)
        return logprob_BT, kl_BT

    @staticmethod
    def backward(ctx, g_lp_BT, g_kl_BT):
        logits_BTV, ids_BT, probs_BTV, lse_BT = ctx.saved_tensors
        grad = torch.sub(logits_BTV, lse_BT.unsqueeze(-1)).exp_()  # softmax
        grad.mul_((g_kl_BT - g_lp_BT).unsqueeze(-1))
        grad.addcmul_(probs_BTV, -g_kl_BT.unsqueeze(-1))
        grad.scatter_add_(-1, ids_BT.unsqueeze(-1), g_lp_BT.unsqueeze(-1))
        return grad, None, None, None, None


def logprob_and_kl(logits_BTV: torch.Tensor, ids_BT: torch.Tensor, ref: ReferenceTerms):
    """log pi_theta(y_t | s_t) and KL(pi_ref || pi_theta) at each position, float32, differentiable in logits."""
    return _LogprobAndKL.apply(logits_BTV.float(), ids_BT, ref.logits_BTV, ref.probs_BTV, ref.lse_BT)


@dataclass
class LossTerms:
    objective: torch.Tensor
    """Scalar to back-propagate: verl policy loss + beta * aggregated exact KL."""
    l_chunk: torch.Tensor
    """The spec's L_chunk value, aggregated like the objective (detached)."""
    l_kl: torch.Tensor
    """The aggregated exact KL on unaudited tokens (detached, before beta)."""
    chunk_B: torch.Tensor
    """Per-sequence L_chunk = -sum_t A_t log pi(y_t) (detached)."""
    kl_B: torch.Tensor
    """Per-sequence L_KL = sum_{t unaudited} KL_t (detached)."""
    policy_metrics: dict[str, Any]


def make_actor_config(*, policy_loss: str, clip_ratio: float, loss_agg_mode: str, micro_batch_size: int):
    """verl's ActorConfig carrying what its policy-loss functions read (clip ratios, aggregation, batch info)."""
    from verl.workers.config import ActorConfig
    from verl.workers.config.actor import PolicyLossConfig

    return ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=micro_batch_size,
        clip_ratio=clip_ratio,
        clip_ratio_low=clip_ratio,
        clip_ratio_high=clip_ratio,
        loss_agg_mode=loss_agg_mode,
        policy_loss=PolicyLossConfig(loss_mode=policy_loss),
        use_torch_compile=False,
    )


def omniopd_loss(
    logits_BTV: torch.Tensor,
    ref: ReferenceTerms | torch.Tensor,
    response_ids_BT: torch.Tensor,
    advantage_BT: torch.Tensor,
    response_mask_BT: torch.Tensor,
    unaudited_mask_BT: torch.Tensor,
    *,
    beta: float,
    actor_config,
    global_batch_size: int,
    batch_num_tokens: int,
) -> LossTerms:
    """L_chunk + beta * L_KL for one micro-batch, scaled so that micro-batch objectives SUM to the batch's.

    `ref`: `reference_terms(ref_logits)` (or the reference logits themselves). `global_batch_size` /
    `batch_num_tokens`: sequences / response tokens of the whole optimizer batch, handed to verl's
    agg_loss exactly as verl's actor does for micro-batches.
    """
    from verl.trainer.ppo import core_algos

    if not isinstance(ref, ReferenceTerms):
        ref = reference_terms(ref)
    mode = actor_config.loss_agg_mode
    actor_config.global_batch_info.update(
        dp_size=1, global_batch_size=global_batch_size, batch_num_tokens=batch_num_tokens
    )
    logprob_BT, kl_BT = logprob_and_kl(logits_BTV, response_ids_BT, ref)
    mask_BT = response_mask_BT.to(logprob_BT.dtype)
    advantage_BT = advantage_BT.to(logprob_BT.dtype)
    policy_loss_fn = core_algos.get_policy_loss_fn(actor_config.policy_loss.loss_mode)
    pg_loss, pg_metrics = policy_loss_fn(
        logprob_BT.detach(), logprob_BT, advantage_BT, mask_BT, mode, actor_config, None
    )
    kl_mat_BT = kl_BT * unaudited_mask_BT.to(kl_BT.dtype) * mask_BT
    agg = dict(loss_agg_mode=mode, **actor_config.global_batch_info)
    kl_loss = core_algos.agg_loss(loss_mat=kl_mat_BT, loss_mask=mask_BT, **agg)
    chunk_mat_BT = -advantage_BT * logprob_BT
    l_chunk = core_algos.agg_loss(loss_mat=chunk_mat_BT.detach(), loss_mask=mask_BT, **agg)
    return LossTerms(
        objective=pg_loss + beta * kl_loss,
        l_chunk=l_chunk.detach(),
        l_kl=kl_loss.detach(),
        chunk_B=(chunk_mat_BT * mask_BT).sum(-1).detach(),
        kl_B=kl_mat_BT.sum(-1).detach(),
        policy_metrics=pg_metrics,
    )
