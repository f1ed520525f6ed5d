"""The local engine: OmniOPD training in one process on CPU or one GPU (`omniopd-verl train --engine local`).

Per step, the training method (`local/methods.py`, `local.method`) says what the update trains on;
OmniOPD's (ALGORITHM.md steps 1-7), the other two being the token-level OPD and SeqKD baselines:
  rollout    transformers sampling from pi_theta, then exact entropies and log-probs from the logits
  audit      the shared Auditor (scheduler, teacher, similarity, Dirichlet smoothing) -> pi_hat per chunk
  credit     the shared advantage path (`omniopd_verl.advantage.advantage_from_audits`, config.advantage)
  update     verl's policy loss + aggregation for L_chunk, the exact-vocabulary KL to the frozen initial
             student on unaudited tokens, AdamW, gradient clipping; micro-batches accumulate gradients
Around it: seeds (every random draw of step k is seeded from (seed, k), so a resumed run equals an
uninterrupted one), checkpoints, metrics to JSONL + TensorBoard, a progress bar, the last step's audits
(JSONL + HTML report, `local/report.py`), and the held-out paired evaluation before and after
training (`local/heldout.py`, its one owner; the maths in `local/paired_eval.py`: steered-token mass and
teacher-minus-base log-likelihood, in eval.json).
`local.control: shuffle_pi_hat` makes the run the control arm (`local/control.py`).

The teacher is built through the registry like any user's (no teacher class is imported here); a
`transformers` teacher with `options.model: reference` samples from the frozen reference copy instead
of loading the weights a third time.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from omniopd_verl.audit.types import ResponseAudit, StudentResponse
from omniopd_verl.local import checkpoint as ckpt
from omniopd_verl.local.config import RunConfig, load_run_config
from omniopd_verl.local.data import Problem, load_splits, prompts_for_step
from omniopd_verl.local.heldout import HeldoutEvaluation
from omniopd_verl.local.loss import make_actor_config
from omniopd_verl.local.methods import build_method
from omniopd_verl.local.metrics import MetricsLogger
from omniopd_verl.local.rollout import Rollout, sample_responses
from omniopd_verl.local.update import Timer, policy_update
from omniopd_verl.runtime.generation import pad_token_id


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from omniopd_verl.errors import ConfigError

        raise ConfigError("local.device='cuda' is invalid here: no CUDA device is available (allowed 'auto' or 'cpu')")
    return torch.device(name)


def audit_to_dict(audit: ResponseAudit, config=None) -> dict[str, Any]:
    """The one audit serializer (omniopd_verl.audit.records), the shape of `omniopd-verl audit`'s JSONL."""
    from omniopd_verl.audit.records import audit_record

    return audit_record(audit, config)


def _no_phase(name: str) -> None:
    pass


class LocalTrainer:
    """Owns the models, optimizer, auditor and output folder of one local run."""

    def __init__(self, run: RunConfig, *, teacher=None, similarity=None):
        from omniopd_verl.audit.auditor import Auditor
        from omniopd_verl.runtime.models import load_causal_lm

        self.run = run
        cfg = run.local
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
        torch.manual_seed(cfg.seed)
        self.model, self.tokenizer = load_causal_lm(cfg.model, dtype=dtype, device=str(self.device))
        self.model.train()
        # pi_ref: a frozen copy of the INITIAL student (also on resume: reloaded from cfg.model)
        self.ref_model, _ = load_causal_lm(cfg.model, dtype=dtype, device=str(self.device))
        self.ref_model.eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay
        )
        self.actor_config = make_actor_config(
            policy_loss=cfg.policy_loss,
            clip_ratio=cfg.clip_ratio,
            loss_agg_mode=run.omniopd.loss_agg_mode,
            micro_batch_size=cfg.micro_batch_size,
        )
        if teacher is None:
            teacher = self._build_teacher()
        self.auditor = Auditor(run.omniopd, self.tokenizer, teacher=teacher, similarity=similarity)
        # the training method (local/methods.py): what a step trains on; everything around it is here
        self.method = build_method(cfg.method, self.auditor.teacher, run.omniopd.teacher.name)
        # the held-out measurement's one owner (local/heldout.py)
        self.heldout = HeldoutEvaluation(run, self.ref_model, self.tokenizer, self.audit, self.auditor.reset_metrics)
        self.train_problems, self.heldout_problems = load_splits(cfg.data)
        self.output_dir = Path(cfg.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.loop = asyncio.new_event_loop()
        self.step = 0
        self.last_audits: list[ResponseAudit] = []
        self.last_rollouts: list[Rollout] = []
        self._phase = _no_phase  # fit() points this at the progress bar: which phase a step is in

    def _build_teacher(self):
        """The teacher the config names, built through the registry exactly as a user would build it.

        The engine offers one resource, its frozen reference copy of the initial student, to a teacher
        whose config asks for it explicitly (`omniopd.teacher.options.model: reference`, an option of the
        `transformers` teacher): then the teacher samples from pi_ref's weights instead of loading them again.
        """
        from omniopd_verl import registry

        tcfg = self.run.omniopd.teacher
        if tcfg.options.get("model") != "reference":
            return registry.create_teacher(tcfg)
        return registry.create_teacher(tcfg, resources={"reference_model": (self.ref_model, self.tokenizer)})

    # ------------------------------------------------------------------ steps

    def responses_for_audit(self, rollouts: Sequence[Rollout]) -> list[StudentResponse]:
        return [
            StudentResponse(
                uid=r.uid,
                prompt_text=r.prompt_text,
                response_ids=r.response_ids,
                logprobs_T=r.logprobs_T,
                entropy_T=r.entropy_T,
                entropy_source="exact",
                prompt_messages=[dict(m) for m in r.problem.messages],
                teacher_context=r.problem.reference,
            )
            for r in rollouts
        ]

    def rollout(
        self, problems: Sequence[Problem], *, seed: int, uid_prefix: str, responses_per_prompt: int
    ) -> list[Rollout]:
        return sample_responses(
            self.model,
            self.tokenizer,
            problems,
            responses_per_prompt=responses_per_prompt,
            max_new_tokens=self.cfg.max_new_tokens,
            max_prompt_tokens=self.cfg.max_prompt_tokens,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            seed=seed,
            uid_prefix=uid_prefix,
        )

    def audit(self, rollouts: Sequence[Rollout]) -> list[ResponseAudit]:
        return self.loop.run_until_complete(self.auditor.audit(self.responses_for_audit(rollouts)))

    def apply_credit(self, prompts, responses, credit, *, beta: float, timer: Timer) -> dict[str, float]:
        """One optimizer step on per-token credit (`omniopd_verl.local.update.policy_update`)."""
        return policy_update(
            self.model,
            self.ref_model,
            self.optimizer,
            self.actor_config,
            prompts,
            responses,
            credit,
            beta=beta,
            micro_batch_size=self.cfg.micro_batch_size,
            grad_clip=self.cfg.grad_clip,
            pad_token_id=pad_token_id(self.tokenizer),
            timer=timer,
        )

    def phase(self, name: str) -> None:
        """Say which phase the step is in (fit() shows it on the progress bar)."""
        self._phase(name)

    def train_step(self) -> dict[str, float]:
        """One step of the training method for self.step (rollout, teacher, update); returns its metrics."""
        cfg, step = self.cfg, self.step
        timer = Timer()
        t0 = time.perf_counter()
        idx = prompts_for_step(len(self.train_problems), step, cfg.prompts_per_step, cfg.seed)
        problems = [self.train_problems[i] for i in idx]
        batch = self.method.step(self, problems, timer)
        lr = cfg.lr * min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else cfg.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        metrics = self.apply_credit(batch.prompts, batch.responses, batch.credit, beta=batch.beta, timer=timer)
        metrics["train/lr"] = lr
        metrics.update(batch.metrics)
        if batch.rollouts:  # on-policy methods: what the student wrote
            lengths = [len(r.response_ids) for r in batch.rollouts]
            metrics.update(
                {
                    "rollout/response_len_mean": sum(lengths) / len(lengths),
                    "rollout/finished_frac": sum(r.finished for r in batch.rollouts) / len(batch.rollouts),
                    "rollout/entropy_mean": float(torch.cat([r.entropy_T for r in batch.rollouts]).mean()),
                    "rollout/entropy_source": "exact",
                }
            )
        metrics.update({f"time/{k}": v for k, v in timer.seconds.items()})
        metrics["time/step"] = time.perf_counter() - t0
        self.last_audits, self.last_rollouts = batch.audits, batch.rollouts
        return metrics

    # ------------------------------------------------------------------ the run

    def save(self) -> Path:
        return ckpt.save_checkpoint(
            self.output_dir, self.step, self.model, self.tokenizer, self.optimizer, {"config": self.run.to_dict()}
        )

    def resume(self) -> int | None:
        path = ckpt.latest_checkpoint(self.output_dir) if self.cfg.resume else None
        if path is None:
            return None
        state = ckpt.load_checkpoint(path, self.model, self.optimizer)
        self.step = int(state["step"])
        return self.step

    def write_report(self) -> Path | None:
        from omniopd_verl.local.report import write_last_step_report

        return write_last_step_report(
            self.output_dir, self.tokenizer, self.last_rollouts, self.last_audits, self.run, self.step
        )

    def fit(self, heldout=None, on_step=None) -> dict[str, Any]:
        """Train cfg.steps steps. With held-out prompts (or `heldout` = (items, measures_before) from
        prepare_heldout, shared between arms) the paired evaluation runs before and after.
        `on_step(trainer, metrics)` is called after every step (the experiment's per-step metric)."""
        from omniopd_verl.local import paired_eval as pe

        cfg = self.cfg
        resumed = self.resume()
        logger = MetricsLogger(self.output_dir, tensorboard=cfg.tensorboard, resume_step=resumed)
        eval_path, set_path = self.output_dir / "eval.json", self.output_dir / "heldout_set.jsonl"
        evals = json.loads(eval_path.read_text()) if resumed is not None and eval_path.exists() else {}
        items = before = None
        if heldout is not None:
            items, before = heldout
        elif "before" in evals and set_path.exists():
            items, before = pe.load_items(set_path), evals["before"]
        elif self.heldout_problems and self.step == 0:
            items, before = self.heldout.prepare(self.heldout_problems)
        if items is not None:
            pe.save_items(items, set_path)
            evals["before"] = before
            eval_path.write_text(json.dumps(evals, indent=2))
        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="omniopd local", unit="step", file=sys.stderr)
            self._phase = lambda name: bar.set_description(f"step {self.step + 1}/{cfg.steps}: {name}")
        try:
            while self.step < cfg.steps:
                metrics = self.train_step()
                self.step += 1
                logger.log(self.step, metrics)
                if on_step is not None:
                    on_step(self, metrics)
                if bar is not None:
                    bar.set_postfix(
                        pi_hat=f"{metrics.get('audit/pi_hat_mean', float('nan')):.3f}",
                        l_chunk=f"{metrics['loss/l_chunk']:.2f}",
                        l_kl=f"{metrics['loss/l_kl']:.3f}",
                    )
                    bar.update(1)
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.save()
        finally:
            self._phase = _no_phase
            if bar is not None:
                bar.close()
            logger.close()
        checkpoint = self.save() if cfg.save_final else None
        report = self.write_report()
        if items:
            evals["paired"] = self.heldout.after(self.model, items, before)
            eval_path.write_text(json.dumps(evals, indent=2))
        summary = {
            "output_dir": str(self.output_dir),
            "checkpoint": str(checkpoint) if checkpoint else None,
            "report": str(report) if report else None,
            "metrics": str(logger.path),
            "eval": {k: v for k, v in evals.items() if k != "before"},
        }
        if "paired" in summary["eval"]:
            summary["eval"]["paired"] = {k: v for k, v in evals["paired"].items() if k != "after"}
        (self.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.auditor.aclose())
        finally:
            self.loop.close()


def run(config_path: str | None, overrides: Sequence[str] = ()) -> int:
    """Entry point behind `omniopd-verl train --engine local --config FILE.yaml [key=value ...]`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_cfg = load_run_config(config_path, overrides)
    trainer = LocalTrainer(run_cfg)
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
    print(
        f"omniopd local: {trainer.step} steps done; checkpoint {summary['checkpoint']}; "
        f"metrics {summary['metrics']}; report {summary['report']}",
        file=sys.stderr,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m omniopd_verl.local.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=False, help="run file (YAML with omniopd: and local: nodes)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. local.steps=2 omniopd.beta=0.2")
    args = parser.parse_args(argv)
    return run(args.config, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
