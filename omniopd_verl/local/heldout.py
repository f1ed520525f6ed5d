"""The one owner of the local engine's held-out measurement (the maths: paired_eval.py).

`HeldoutEvaluation` builds the fixed held-out set from the initial student (pi_ref), measures a model
on it ("gap", and "mass" when the teacher is the steered demonstration teacher), gives the teacher's
own mass (the target: pi_ref under the steering bias) and the paired change after training. The trainer
makes one; the demo and the experiment ask it, and never touch the reference model themselves.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from omniopd_verl.core.seeds import stable_seed
from omniopd_verl.local import paired_eval as pe
from omniopd_verl.local.rollout import sample_responses
from omniopd_verl.runtime.generation import pad_token_id
from omniopd_verl.teachers.steering import Steering, read_steering


class HeldoutEvaluation:
    def __init__(self, run, ref_model, tokenizer, audit: Callable[[Sequence[Any]], list], reset_audit_metrics):
        self.cfg = run.local
        self.chunk_len = run.omniopd.chunk_len
        self.ref_model = ref_model
        self.tokenizer = tokenizer
        self._audit = audit
        self._reset_audit_metrics = reset_audit_metrics
        self.steering: Steering | None = read_steering(run.omniopd.teacher.options, tokenizer, ref_model)
        """The demonstration teacher's steering (its token set is the "mass" metric's), or None."""

    def prepare(self, problems) -> tuple[list[pe.HeldoutItem], dict[str, list[float]]]:
        """The fixed held-out set and the initial student's measures on it."""
        cfg, items, per = self.cfg, [], 8
        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=len(problems),
                desc="held-out set (rollout, teacher, base samples)",
                unit="prompt",
                file=sys.stderr,
            )
        for lo in range(0, len(problems), per):  # in parts, so the bar moves
            part = problems[lo : lo + per]
            rollouts = sample_responses(
                self.ref_model,
                self.tokenizer,
                part,
                responses_per_prompt=1,
                max_new_tokens=cfg.max_new_tokens,
                max_prompt_tokens=cfg.max_prompt_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                seed=stable_seed(cfg.seed, "eval", lo),
                uid_prefix="eval-",
            )
            self._reset_audit_metrics()
            audits = self._audit(rollouts)
            items += pe.build_heldout_set(
                rollouts,
                audits,
                self.ref_model,
                self.tokenizer,
                chunk_len=self.chunk_len,
                seed=stable_seed(cfg.seed, "eval-base", lo),
            )
            if bar is not None:
                bar.update(len(part))
        if bar is not None:
            bar.close()
        return items, self.measure(self.ref_model, items)

    def measure(self, model, items) -> dict[str, list[float]]:
        """paired_eval.measure of `model` (a student) on the held-out set: "gap", and "mass" when steered."""
        return pe.measure(
            model,
            items,
            pad_token_id=pad_token_id(self.tokenizer),
            set_ids=self.steering.token_ids if self.steering else None,
            progress=self.cfg.progress,
        )

    def teacher_mass(self, items) -> list[float]:
        """The demonstration teacher's own mass on the held-out set (pi_ref under the steering bias): the target."""
        if self.steering is None:
            raise ValueError("teacher_mass needs a steered demonstration teacher (omniopd.teacher.options.steer)")
        measured = pe.measure(
            self.ref_model,
            items,
            pad_token_id=pad_token_id(self.tokenizer),
            set_ids=self.steering.token_ids,
            logit_bias_V=self.steering.bias_V,
            gap=False,  # the teacher's own texts need no gap; its mass is the target
            progress=self.cfg.progress,
        )
        return measured["mass"]

    def after(self, model, items, before) -> dict[str, Any]:
        """The paired change of every held-out measure, by key ("mass" first when present), plus "after"."""
        after = self.measure(model, items)
        return {**pe.paired_changes(items, before, after, seed=self.cfg.seed), "after": after}
