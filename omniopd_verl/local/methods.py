"""The local engine's training methods behind one interface (`local.method`).

A method turns one step's prompts into what the policy update trains on: (prompt, response) token ids,
per-token credit, the weight beta of the KL anchor on unaudited tokens, and the method's own metrics.
The trainer (train.py) owns everything around it: the models, the optimizer, the update, the run.

- `omniopd`: the student's own samples, audited by the teacher; credit = the one audits -> advantage
  path (`advantage.advantage_from_audits`, the same two steps verl runs split at its seam); the control
  arm (`local.control: shuffle_pi_hat`) shuffles pi_hat between chunks first.
- `token_opd`: the white-box baseline (token_opd.py): log pi_T - log pi_theta on every token of the
  student's own samples, pi_T from the teacher the registry built (its `token_logprobs`).
- `seqkd`: off-policy SFT on the teacher's answers (seqkd.py); no student rollout, no KL anchor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from omniopd_verl.audit.types import ResponseAudit
from omniopd_verl.core import TokenCredit
from omniopd_verl.core.seeds import stable_seed
from omniopd_verl.errors import ConfigError, GuardError
from omniopd_verl.local.data import Problem
from omniopd_verl.local.loss import collate
from omniopd_verl.local.rollout import Rollout
from omniopd_verl.local.update import Timer
from omniopd_verl.runtime.generation import pad_token_id


class Trainer(Protocol):
    """What a method uses of the trainer (train.LocalTrainer): its config, step, tokenizer, auditor (and
    the auditor's teacher), event loop, the student's rollout, the audit, and the progress-bar phase."""

    run: Any
    cfg: Any
    step: int
    tokenizer: Any
    auditor: Any
    loop: Any

    def rollout(self, problems, *, seed: int, uid_prefix: str, responses_per_prompt: int) -> list[Rollout]: ...

    def audit(self, rollouts) -> list[ResponseAudit]: ...

    def phase(self, name: str) -> None: ...


@dataclass
class MethodStep:
    """What one step of a method trains on, and what it reports."""

    prompts: list[list[int]]
    responses: list[list[int]]
    credit: TokenCredit
    beta: float
    metrics: dict[str, float]
    rollouts: list[Rollout] = field(default_factory=list)
    audits: list[ResponseAudit] = field(default_factory=list)
    """The step's audits as audited (the report shows them; the control arm trains on shuffled copies)."""


class TrainingMethod(Protocol):
    name: str

    def step(self, trainer: Trainer, problems: Sequence[Problem], timer: Timer) -> MethodStep: ...


def _student_rollouts(trainer: Trainer, problems: Sequence[Problem], timer: Timer) -> list[Rollout]:
    cfg = trainer.cfg
    trainer.phase("rollout")
    with timer("rollout"):
        return trainer.rollout(
            problems,
            seed=stable_seed(cfg.seed, "rollout", trainer.step),
            uid_prefix=f"s{trainer.step}-",
            responses_per_prompt=cfg.responses_per_prompt,
        )


class OmniOPD:
    name = "omniopd"

    def step(self, trainer: Trainer, problems: Sequence[Problem], timer: Timer) -> MethodStep:
        rollouts = _student_rollouts(trainer, problems, timer)
        trainer.auditor.reset_metrics()
        trainer.phase("audit (teacher + similarity)")
        with timer("audit"):
            audits = trainer.audit(rollouts)
        audit_metrics = trainer.auditor.metrics()
        trainer.phase("update")
        return self.train_on(trainer, rollouts, audits, audit_metrics)

    def train_on(
        self, trainer: Trainer, rollouts: Sequence[Rollout], audits: Sequence[ResponseAudit], metrics=None
    ) -> MethodStep:
        """What the update trains on for these rollouts and their audits."""
        from omniopd_verl.advantage import advantage_from_audits

        trained_on = audits
        if trainer.cfg.control == "shuffle_pi_hat":  # the control arm: no teacher information
            from omniopd_verl.local.control import shuffle_pi_hat

            trained_on = shuffle_pi_hat(audits, stable_seed(trainer.cfg.seed, "control", trainer.step))
        prompts, responses = [r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts]
        batch = collate(prompts, responses, pad_token_id(trainer.tokenizer))
        omniopd = trainer.run.omniopd
        advantage_BT, credit = advantage_from_audits(trained_on, batch.response_mask_BT, omniopd.advantage)
        credit = dataclasses.replace(credit, advantage_BT=advantage_BT)
        return MethodStep(prompts, responses, credit, omniopd.beta, dict(metrics or {}), list(rollouts), list(audits))


class TokenOPD:
    name = "token_opd"

    def __init__(self, teacher: Any, teacher_name: str):
        plugin = getattr(teacher, "plugin", teacher)  # the library's Teacher wraps the plugin the registry built
        if not callable(getattr(plugin, "token_logprobs", None)):
            raise ConfigError(
                f"omniopd.teacher.name={teacher_name!r} is invalid with local.method='token_opd': allowed "
                "'transformers' (token-level OPD needs the teacher's log-probs, a white-box local model)"
            )
        self.white_box = plugin

    def step(self, trainer: Trainer, problems: Sequence[Problem], timer: Timer) -> MethodStep:
        from omniopd_verl.local.token_opd import token_opd_credit

        rollouts = _student_rollouts(trainer, problems, timer)
        trainer.phase("update")
        prompts, responses = [r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts]
        batch = collate(prompts, responses, pad_token_id(trainer.tokenizer))
        with timer("teacher_logprobs"):
            teacher_lp = self.white_box.token_logprobs(prompts, responses)
        credit = token_opd_credit(teacher_lp, [r.logprobs_T for r in rollouts], batch.response_mask_BT)
        metrics = {  # one teacher forward per response, over its prompt and response tokens
            "teacher/calls": float(len(rollouts)),
            "teacher/prompt_tokens": float(sum(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))),
            "teacher/completion_tokens": 0.0,
        }
        # beta as configured: token_opd has no unaudited token, so the KL anchor adds nothing
        return MethodStep(prompts, responses, credit, trainer.run.omniopd.beta, metrics, list(rollouts))


class SeqKD:
    name = "seqkd"

    def step(self, trainer: Trainer, problems: Sequence[Problem], timer: Timer) -> MethodStep:
        from omniopd_verl.local import seqkd
        from omniopd_verl.local.rollout import render_prompts

        cfg = trainer.cfg
        rendered = render_prompts(trainer.tokenizer, problems, cfg.max_prompt_tokens)
        requests = seqkd.answer_requests(
            problems,
            [text for text, _ in rendered],
            n=cfg.responses_per_prompt,
            max_new_tokens=cfg.max_new_tokens,
            step=trainer.step,
            seed=trainer.run.omniopd.seed,
        )
        trainer.auditor.reset_metrics()
        trainer.phase("teacher answers")
        with timer("teacher"):
            results = trainer.loop.run_until_complete(trainer.auditor.teacher.sample(requests))
        answers = seqkd.answers_to_token_ids(results, trainer.tokenizer, cfg.max_new_tokens)
        pairs = [(ids, a) for (_, ids), row in zip(rendered, answers, strict=True) for a in row if a]
        if not pairs:
            raise GuardError(f"seqkd step {trainer.step + 1}: every teacher answer was empty")
        prompts, responses = [p for p, _ in pairs], [a for _, a in pairs]
        batch = collate(prompts, responses, pad_token_id(trainer.tokenizer))
        trainer.phase("update")
        metrics = {k: v for k, v in trainer.auditor.metrics().items() if k.startswith("teacher/")}
        metrics.update(
            {
                "seqkd/answers": float(len(responses)),
                "seqkd/empty_answers": float(sum(len(row) for row in answers) - len(responses)),
                "seqkd/answer_len_mean": sum(map(len, responses)) / len(responses),
            }
        )
        # no KL anchor: every token is a teacher token
        return MethodStep(prompts, responses, seqkd.sft_credit(batch.response_mask_BT), 0.0, metrics)


def build_method(name: str, teacher: Any, teacher_name: str) -> TrainingMethod:
    """The method `local.method` names (local/config.py validates the name)."""
    if name == "token_opd":
        return TokenOPD(teacher, teacher_name)
    return {"omniopd": OmniOPD, "seqkd": SeqKD}[name]()
