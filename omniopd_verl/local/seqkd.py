"""SeqKD: SFT on the teacher's own complete answers, the baseline a black-box text-only teacher allows.

Sequence-level knowledge distillation (Kim & Rush, 2016), `local.method: seqkd`. Token-level OPD needs the
teacher's log-probs, which an API does not return; with text alone the standard baseline is to fine-tune
the student on the teacher's answers to the same training prompts. It is the paper's main comparison for
black-box teachers. Each step:

  1. the step's prompts go to the configured teacher (`omniopd.teacher`, through the teacher library: cache,
     retries, budget, exactly-N), one request per prompt with an empty response prefix, `responses_per_prompt`
     answers of at most `max_new_tokens` student-token-equivalents each;
  2. the student's tokenizer re-tokenises each answer, cut to `max_new_tokens` tokens;
  3. the update is the SFT gradient -sum_t log pi_theta(y_t | x, y_<t), through the same verl policy loss as
     OmniOPD with advantage 1 on every answer token (one update per batch, so the ratio is 1 and the
     surrogate's gradient is the NLL's), no KL anchor (every token carries teacher signal).

The student samples nothing (off-policy: the opposite of OmniOPD). For a comparison at equal teacher tokens
set `responses_per_prompt` so that prompts x answers x max_new_tokens matches OmniOPD's M x N x C per response
x responses (`make experiment` does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omniopd_verl.core import TokenCredit
from omniopd_verl.errors import GuardError
from omniopd_verl.protocols import TeacherRequest, TeacherResult


def answer_requests(
    problems, prompt_texts: Sequence[str], *, n: int, max_new_tokens: int, step: int, seed: int
) -> list[TeacherRequest]:
    """One request per prompt: the teacher continues the bare prompt (empty prefix), n answers."""
    from omniopd_verl.core.seeds import stable_seed

    return [
        TeacherRequest(
            request_id=f"seqkd-s{step}-{p.pid}:0",
            prompt_text=text,
            response_prefix="",
            n=n,
            student_tokens=max_new_tokens,
            seed=stable_seed(seed, "seqkd", step, p.pid),
            prompt_messages=tuple(dict(m) for m in p.messages),
            teacher_context=p.reference,
        )
        for p, text in zip(problems, prompt_texts, strict=True)
    ]


def answers_to_token_ids(results: Sequence[TeacherResult], tokenizer, max_new_tokens: int) -> list[list[list[int]]]:
    """Per request, its answers as student token ids (no special tokens, cut to max_new_tokens).

    A failed request (texts None after the library's retries) is an error here: SFT on a batch with holes
    would silently train on fewer answers than the comparison claims."""
    out = []
    for r in results:
        if r.texts is None:
            raise GuardError(f"seqkd: the teacher failed request {r.request_id!r} after retries: {r.error}")
        out.append([tokenizer(t, add_special_tokens=False)["input_ids"][:max_new_tokens] for t in r.texts])
    return out


def sft_credit(response_mask_BT: torch.Tensor) -> TokenCredit:
    """Advantage 1 on every answer token (0 on padding); every token is 'audited', none KL-anchored."""
    mask = response_mask_BT.bool()
    return TokenCredit(
        advantage_BT=mask.to(torch.float32), audit_mask_BT=mask, unaudited_mask_BT=torch.zeros_like(mask)
    )
