"""The local engine: OmniOPD training in one process on CPU or one GPU (`omniopd-verl train --engine local`).

Per step (ALGORITHM.md steps 1-7):
  rollout    transformers sampling from pi_theta, then exact entropies and log-probs from the logits
  audit      the shared Auditor (scheduler, teacher, similarity, Dirichlet smoothing) -> pi_hat per chunk
  credit     the shared advantage path (`omniopd_verl.advantage.advantage_from_audits`, config.advantage)
  update     verl's policy loss + aggregation for L_chunk, the exact-vocabulary KL to the frozen initial
             student on unaudited tokens, AdamW, gradient clipping; micro-batches accumulate gradients
Around it: seeds (every random draw of step k is seeded from (seed, k), so a resumed run equals an
uninterrupted one), checkpoints, metrics to JSONL + TensorBoard, a progress bar, the last step's audits
(JSONL + HTML report), and an optional teacher-agreement evaluation on held-out prompts before and
after training (results in eval.json).

When the teacher is the `transformers` plugin on the same model as the student (privileged
self-distillation), it reuses the frozen reference copy instead of loading the weights a third time.
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
from omniopd_verl.local.loss import collate, make_actor_config
from omniopd_verl.local.metrics import MetricsLogger
from omniopd_verl.local.rollout import Rollout, pad_id, sample_responses
from omniopd_verl.local.update import Timer, policy_update


def _stable_seed(*parts: object) -> int:
    from omniopd_verl.audit.auditor import stable_seed

    return stable_seed(*parts)


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


class LocalTrainer:
    """Owns the models, optimizer, auditor and output folder of one local run."""

    def __init__(self, run: RunConfig, *, teacher=None, similarity=None):
        from omniopd_verl.audit.auditor import Auditor
        from omniopd_verl.models import load_causal_lm

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
            teacher = self._shared_reference_teacher()
        self.auditor = Auditor(run.omniopd, self.tokenizer, teacher=teacher, similarity=similarity)
        self.train_problems, self.heldout_problems = load_splits(cfg.data)
        self.output_dir = Path(cfg.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.loop = asyncio.new_event_loop()
        self.step = 0
        self.last_audits: list[ResponseAudit] = []
        self.last_rollouts: list[Rollout] = []
        self._eval_samples: dict[str, tuple[list[Rollout], list[ResponseAudit]]] = {}

    def _shared_reference_teacher(self):
        """The privileged self-distillation teacher IS the initial student: reuse pi_ref's weights."""
        tcfg = self.run.omniopd.teacher
        if tcfg.name != "transformers" or tcfg.model not in (self.cfg.model, None):
            return None  # the Auditor builds whatever teacher the config names
        extra = set(tcfg.options) - {"batch_rows", "max_tokens_factor"}
        if extra:  # device/dtype options ask for a separate copy: let the plugin load one
            return None
        import dataclasses

        from omniopd_verl import registry

        shared = dataclasses.replace(
            tcfg, model=tcfg.model or self.cfg.model, options={**tcfg.options, "model": "reference"}
        )
        return registry.create_teacher(shared, resources={"reference_model": (self.ref_model, self.tokenizer)})

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

    def update(self, rollouts: Sequence[Rollout], audits: Sequence[ResponseAudit], timer: Timer) -> dict[str, float]:
        """One optimizer step on the batch (see `omniopd_verl.local.update.policy_update`)."""
        import dataclasses

        from omniopd_verl.advantage import advantage_from_audits

        prompts, responses = [r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts]
        batch = collate(prompts, responses, pad_id(self.tokenizer))
        # the one audits -> advantage path, every mode; verl runs the same two steps split at its seam
        advantage_BT, credit = advantage_from_audits(audits, batch.response_mask_BT, self.run.omniopd.advantage)
        credit = dataclasses.replace(credit, advantage_BT=advantage_BT)
        metrics = policy_update(
            self.model,
            self.ref_model,
            self.optimizer,
            self.actor_config,
            prompts,
            responses,
            credit,
            beta=self.run.omniopd.beta,
            micro_batch_size=self.cfg.micro_batch_size,
            grad_clip=self.cfg.grad_clip,
            pad_token_id=pad_id(self.tokenizer),
            timer=timer,
        )
        metrics["train/lr"] = self.cfg.lr
        return metrics

    def train_step(self) -> dict[str, float]:
        """Rollout, audit and update for self.step; returns the step's metrics."""
        cfg, step = self.cfg, self.step
        timer = Timer()
        t0 = time.perf_counter()
        idx = prompts_for_step(len(self.train_problems), step, cfg.prompts_per_step, cfg.seed)
        problems = [self.train_problems[i] for i in idx]
        with timer("rollout"):
            rollouts = self.rollout(
                problems,
                seed=_stable_seed(cfg.seed, "rollout", step),
                uid_prefix=f"s{step}-",
                responses_per_prompt=cfg.responses_per_prompt,
            )
        self.auditor.reset_metrics()
        with timer("audit"):
            audits = self.audit(rollouts)
        audit_metrics = self.auditor.metrics()
        metrics = self.update(rollouts, audits, timer)
        lengths = [len(r.response_ids) for r in rollouts]
        metrics.update(audit_metrics)
        metrics.update(
            {
                "rollout/response_len_mean": sum(lengths) / len(lengths),
                "rollout/finished_frac": sum(r.finished for r in rollouts) / len(rollouts),
                "rollout/entropy_mean": float(torch.cat([r.entropy_T for r in rollouts]).mean()),
                "rollout/entropy_source": "exact",
                **{f"time/{k}": v for k, v in timer.seconds.items()},
                "time/step": time.perf_counter() - t0,
            }
        )
        self.last_audits, self.last_rollouts = list(audits), list(rollouts)
        return metrics

    def evaluate(self, label: str) -> dict[str, float]:
        """Teacher agreement on the held-out prompts: one seeded sample per prompt, audited.

        The same seeds are used before and after training, so the two numbers differ only through
        the student's weights (and through which chunks its new samples expose to the teacher).
        """
        if not self.heldout_problems:
            return {}
        rollouts = self.rollout(
            self.heldout_problems, seed=_stable_seed(self.cfg.seed, "eval"), uid_prefix="eval-", responses_per_prompt=1
        )
        self.auditor.reset_metrics()
        audits = self.audit(rollouts)
        m = self.auditor.metrics()
        chunks = [c for a in audits for c in a.chunks]
        result = {
            "prompts": float(len(rollouts)),
            "chunks": float(len(chunks)),
            "k_sem_frac_mean": m.get("audit/k_sem_frac_mean", float("nan")),
            "pi_hat_mean": m.get("audit/pi_hat_mean", float("nan")),
            "pi_bar_mean": m.get("audit/pi_bar_mean", float("nan")),
            "response_len_mean": sum(len(r.response_ids) for r in rollouts) / len(rollouts),
            "logprob_mean": float(torch.cat([r.logprobs_T for r in rollouts]).mean()),
        }
        with open(self.output_dir / f"eval_{label}_audits.jsonl", "w") as fh:
            for a in audits:
                fh.write(json.dumps(audit_to_dict(a, self.run.omniopd)) + "\n")
        self._eval_samples[label] = (rollouts, audits)
        return result

    def paired_eval(self) -> dict[str, float]:
        """Sampling-noise-free comparison on the BEFORE evaluation's fixed (prefix, text) pairs.

        For every audited chunk of the held-out responses sampled before training: the mean per-token
        log-prob of the teacher's N continuations and of the student's own chunk, given the same prefix,
        under the initial student (= the frozen reference) and under the trained student. If training
        moved the student toward what the teacher writes, the teacher texts' log-prob rises more than
        the student's own chunks'.
        """
        from omniopd_verl.student import encode_text, score_token_ids

        if "before" not in self._eval_samples:
            return {}
        rollouts, audits = self._eval_samples["before"]
        prefixes, texts, kinds = [], [], []
        for r, a in zip(rollouts, audits, strict=True):
            for c in a.chunks:
                prefix = r.prompt_ids + r.response_ids[: c.start]
                for t in c.teacher_texts:
                    ids = encode_text(self.tokenizer, t)
                    if ids:
                        prefixes.append(prefix), texts.append(ids), kinds.append("teacher")
                prefixes.append(prefix), texts.append(r.response_ids[c.start : c.end]), kinds.append("student")
        if not texts:
            return {}
        out: dict[str, float] = {"pairs": float(len(texts))}
        pad = pad_id(self.tokenizer)
        self.model.eval()
        for label, model in (("before", self.ref_model), ("after", self.model)):
            scores = score_token_ids(model, prefixes, texts, pad_token_id=pad)
            for kind in ("teacher", "student"):
                lps = [float(lp.mean()) for (lp, _), k in zip(scores, kinds, strict=True) if k == kind]
                out[f"{kind}_text_logprob_{label}"] = sum(lps) / len(lps) if lps else float("nan")
        self.model.train()
        return out

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
        if not self.last_audits:
            return None
        jsonl = self.output_dir / "last_step_audits.jsonl"
        with jsonl.open("w") as fh:
            for a in self.last_audits:
                fh.write(json.dumps(audit_to_dict(a, self.run.omniopd)) + "\n")
        from omniopd_verl.audit.report import ReportItem, render_report
        from omniopd_verl.audit.text import ResponseText

        items = []
        for r, a in zip(self.last_rollouts, self.last_audits, strict=True):
            record = audit_to_dict(a, self.run.omniopd)
            bounds, kinds = [0], []
            for k, c in enumerate(a.chunks):
                if c.start > bounds[-1]:
                    bounds.append(c.start)
                    kinds.append(None)
                bounds.append(c.end)
                kinds.append(k)
            if bounds[-1] < len(r.response_ids):
                bounds.append(len(r.response_ids))
                kinds.append(None)
            texts = ResponseText(self.tokenizer, r.response_ids).segments(bounds)
            items.append(ReportItem(r.uid, r.prompt_text, list(zip(texts, kinds, strict=True)), record))
        html = self.output_dir / "last_step_report.html"
        summary = {
            "step": str(self.step),
            "teacher": f"{self.run.omniopd.teacher.name}:{self.run.omniopd.teacher.model}",
            "similarity": self.run.omniopd.similarity,
        }
        html.write_text(
            render_report(items, title=f"OmniOPD local engine: audits of step {self.step}", summary=summary),
            encoding="utf-8",
        )
        return html

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        resumed = self.resume()
        logger = MetricsLogger(self.output_dir, tensorboard=cfg.tensorboard, resume_step=resumed)
        eval_path = self.output_dir / "eval.json"
        evals = json.loads(eval_path.read_text()) if resumed is not None and eval_path.exists() else {}
        if "before" not in evals and self.heldout_problems and self.step == 0:
            evals["before"] = self.evaluate("before")
            eval_path.write_text(json.dumps(evals, indent=2))
        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="omniopd local", unit="step", file=sys.stderr)
        try:
            while self.step < cfg.steps:
                metrics = self.train_step()
                self.step += 1
                logger.log(self.step, metrics)
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
            if bar is not None:
                bar.close()
            logger.close()
        checkpoint = self.save()
        report = self.write_report()
        if self.heldout_problems:
            evals["after"] = self.evaluate("after")
            paired = self.paired_eval()
            if paired:
                evals["paired"] = paired
            eval_path.write_text(json.dumps(evals, indent=2))
        summary = {
            "output_dir": str(self.output_dir),
            "checkpoint": str(checkpoint),
            "report": str(report) if report else None,
            "metrics": str(logger.path),
            "eval": evals,
        }
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
