"""`make demo`: the quickstart recipe end to end on the local engine, then a short table of what happened.

Runs recipes/quickstart_cpu/quickstart_cpu.yaml (privileged self-distillation of SmolLM2-135M-Instruct on
GSM8K, the teacher being the same base model shown the reference solution) from scratch, offline, and
prints per step: mean pi_hat, mean k_sem/N, fraction of response tokens audited, L_chunk, L_KL, teacher
calls and cache hits, step time; then teacher agreement (mean k_sem/N) on fixed held-out GSM8K test
prompts before vs after training, and where the report, metrics and checkpoint are.

Usage: python -m omniopd_verl.demo [key=value ...]   (overrides, e.g. local.steps=2)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart_cpu" / "quickstart_cpu.yaml"

COLUMNS = [
    ("step", "step", "{:>4d}"),
    ("pi_hat", "audit/pi_hat_mean", "{:>7.3f}"),
    ("k_sem/N", "audit/k_sem_frac_mean", "{:>7.3f}"),
    ("audited", "audit/token_fraction", "{:>7.1%}"),
    ("L_chunk", "loss/l_chunk", "{:>8.3f}"),
    ("L_KL", "loss/l_kl", "{:>8.4f}"),
    ("t.calls", "teacher/calls", "{:>7.0f}"),
    ("t.cache", "teacher/cache_hits", "{:>7.0f}"),
    ("step s", "time/step", "{:>7.1f}"),
]


def format_table(rows: list[dict]) -> str:
    header = " ".join(f"{name:>{len(fmt.format(0) if 'd' in fmt else fmt.format(0.0))}}" for name, _, fmt in COLUMNS)
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = []
        for _, key, fmt in COLUMNS:
            value = row.get(key)
            width = len(fmt.format(0) if "d" in fmt else fmt.format(0.0))
            cells.append(fmt.format(value) if value is not None else f"{'n/a':>{width}}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def format_eval(evals: dict) -> str:
    before, after = evals.get("before"), evals.get("after")
    if not before or not after:
        return "held-out evaluation: not configured (local.data.heldout_prompts = 0)"
    lines = [
        f"teacher agreement on {int(before['prompts'])} held-out GSM8K test prompts (same sampling seeds):",
        f"  {'':<28}{'before':>10}{'after':>10}{'change':>10}",
    ]
    for label, key in (
        ("mean k_sem/N (agreement)", "k_sem_frac_mean"),
        ("mean pi_hat", "pi_hat_mean"),
        ("mean prior pi_bar", "pi_bar_mean"),
        ("mean student log-prob", "logprob_mean"),
        ("mean response tokens", "response_len_mean"),
        ("audited chunks", "chunks"),
    ):
        b, a = before.get(key, float("nan")), after.get(key, float("nan"))
        lines.append(f"  {label:<28}{b:>10.4f}{a:>10.4f}{a - b:>+10.4f}")
    paired = evals.get("paired")
    if paired:
        lines.append(
            f"same {int(paired['pairs'])} (prefix, text) pairs from the 'before' audit, scored by the initial "
            "vs the trained student (no sampling noise):"
        )
        for label, kind in (("teacher texts: log-prob/token", "teacher"), ("own chunks: log-prob/token", "student")):
            b, a = paired[f"{kind}_text_logprob_before"], paired[f"{kind}_text_logprob_after"]
            lines.append(f"  {label:<28}{b:>10.4f}{a:>10.4f}{a - b:>+10.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    overrides = list(sys.argv[1:] if argv is None else argv)
    from omniopd_verl.local.config import load_run_config
    from omniopd_verl.local.metrics import read_metrics
    from omniopd_verl.local.train import run

    # a demo always starts from the initial student, never from an older demo's checkpoint
    overrides = ["local.resume=false", *overrides]
    cfg = load_run_config(str(RECIPE), overrides)
    t0 = time.perf_counter()
    print(
        f"OmniOPD demo: {RECIPE.relative_to(Path.cwd()) if RECIPE.is_relative_to(Path.cwd()) else RECIPE}", flush=True
    )
    print(
        f"student {cfg.local.model}, teacher {cfg.omniopd.teacher.name}:{cfg.omniopd.teacher.model} with the "
        f"reference solution, similarity {cfg.omniopd.similarity}, M={cfg.omniopd.chunks} N={cfg.omniopd.samples} "
        f"C={cfg.omniopd.chunk_len}, {cfg.local.steps} steps x {cfg.local.batch_size} responses",
        flush=True,
    )
    code = run(str(RECIPE), overrides)
    if code:
        return code
    out = Path(cfg.local.output_dir)
    summary = json.loads((out / "summary.json").read_text())
    print()
    print(format_table(read_metrics(out / "metrics.jsonl")))
    print()
    print(format_eval(summary.get("eval", {})))
    print()
    print(f"audit report (last step): {summary['report']}")
    print(f"checkpoint:               {summary['checkpoint']}")
    print(f"metrics:                  {summary['metrics']} (TensorBoard: {out / 'tensorboard'})")
    print(f"total time:               {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
