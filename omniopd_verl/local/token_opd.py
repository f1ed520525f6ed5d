"""White-box token-level OPD: the paper's main baseline, in the local engine (`local.method: token_opd`).

The verl/tinker formulation of on-policy distillation with teacher logits: on every response token of
the student's own sample, the per-token advantage is the negative sampled-token reverse KL

    A_t = log pi_T(y_t | s_t) - log pi_theta(y_t | s_t)        (pi_theta at sampling time, no gradient)

trained through the same verl policy loss as OmniOPD's chunks (ratio 1 on the single update, so the
gradient is -sum_t A_t grad log pi_theta(y_t | s_t) under the configured aggregation). Every response
token carries teacher signal, so there is no KL anchor (no unaudited token) and no audit.
The teacher must be white-box: a local `transformers` teacher (its log-probs come from its logits, with
the demonstration teacher's steering bias when `options.steer` is set). It costs one teacher forward
over the batch per step and no sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omniopd_verl.core import TokenCredit
from omniopd_verl.errors import ConfigError
from omniopd_verl.runtime.generation import score_continuations


class WhiteBoxScorer:
    """The white-box view of a local teacher: log pi_T of given tokens (a local causal LM, optionally steered)."""

    def __init__(self, model, logit_bias_V: torch.Tensor | None = None):
        self.model = model
        self.logit_bias_V = logit_bias_V

    @classmethod
    def from_config(cls, teacher_cfg, *, student_model_name: str, reference_model, tokenizer) -> WhiteBoxScorer:
        if teacher_cfg.name != "transformers":
            raise ConfigError(
                f"omniopd.teacher.name={teacher_cfg.name!r} is invalid with local.method='token_opd': allowed "
                "'transformers' (token-level OPD needs the teacher's log-probs, a white-box local model)"
            )
        model = reference_model
        if teacher_cfg.model not in (None, student_model_name):
            from omniopd_verl.runtime.models import load_causal_lm

            model, _ = load_causal_lm(teacher_cfg.model)
        bias = None
        steer = teacher_cfg.options.get("steer")
        if steer is not None:
            from omniopd_verl.teachers.steering import steer_bias

            bias = steer_bias(tokenizer, model.get_output_embeddings().weight.shape[0], steer)
        return cls(model, bias)

    def token_logprobs(
        self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], *, pad_token_id: int
    ) -> list[torch.Tensor]:
        scores = score_continuations(
            self.model,
            prompt_ids,
            [[r] for r in response_ids],
            pad_token_id=pad_token_id,
            logit_bias_V=self.logit_bias_V,
        )
        return [row[0] for row in scores]


def token_opd_credit(
    teacher_logprobs: Sequence[torch.Tensor], student_logprobs: Sequence[torch.Tensor], response_mask_BT: torch.Tensor
) -> TokenCredit:
    """advantage_BT = log pi_T - log pi_theta on every response token (0 on padding); no KL-anchor token."""
    B, T = response_mask_BT.shape
    advantage_BT = torch.zeros((B, T), dtype=torch.float32)
    for b, (t_lp, s_lp) in enumerate(zip(teacher_logprobs, student_logprobs, strict=True)):
        if len(t_lp) != len(s_lp) or len(t_lp) != int(response_mask_BT[b].sum()):
            raise ValueError(f"row {b}: {len(t_lp)} teacher and {len(s_lp)} student log-probs for the response")
        advantage_BT[b, : len(t_lp)] = t_lp.float() - s_lp.float()
    mask = response_mask_BT.bool()
    return TokenCredit(advantage_BT=advantage_BT * mask, audit_mask_BT=mask, unaudited_mask_BT=torch.zeros_like(mask))
