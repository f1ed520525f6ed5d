"""Step-time breakdown of the local engine: rollout, audit, reference, update (CPU, the quickstart recipe).

Runs a few training steps of recipes/quickstart_cpu (SmolLM2-135M-Instruct student, the steered
demonstration teacher on the same frozen weights, MiniLM similarity) without evaluation, into a temporary
folder, and prints each stage's seconds and share of the step from the run's own metrics.jsonl.
The process's CPU time is printed too: on a shared machine wall time depends on the neighbours, CPU
time much less.

With --compare the same steps run twice, first with the old sampling path (every teacher sample and
every rollout response prefilled on its own row) and then with the shared-prefix one, and the step
time ratio old/new is printed.

Usage: python benchmarks/bench_local_step_breakdown.py [--steps 2] [--tiny] [--compare] [key=value ...]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart_cpu" / "quickstart_cpu.yaml"
STAGES = ("rollout", "audit", "reference", "update", "teacher_logprobs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="tiny random model and ned similarity (seconds)")
    parser.add_argument("--compare", action="store_true", help="also time the old one-row-per-sample path")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.compare:
        from omniopd_verl.runtime import generation

        generation.DEFAULT_SHARE_PREFIX = False
        old = run_steps(args)
        generation.DEFAULT_SHARE_PREFIX = True
        new = run_steps(args)
        old_s, new_s = sum(r["time/step"] for r in old), sum(r["time/step"] for r in new)
        print(f"\nstep time, old path (one prefill per sample row): {old_s / len(old):.1f} s/step")
        print(f"step time, new path (one prefill per prefix):      {new_s / len(new):.1f} s/step")
        print(f"demo step time ratio old/new: {old_s / new_s:.2f}x")
        return
    run_steps(args)


def run_steps(args) -> list[dict]:
    from omniopd_verl.local.metrics import read_metrics
    from omniopd_verl.local.train import run

    out = tempfile.mkdtemp(prefix="omniopd-bench-")
    overrides = [
        f"local.steps={args.steps}",
        "local.data.heldout_prompts=0",
        f"local.output_dir={out}",
        "local.progress=false",
        "local.tensorboard=false",
        "local.resume=false",
    ]
    if args.tiny:
        from omniopd_verl.runtime.models import make_tiny_random_model

        tiny = make_tiny_random_model(os.path.join(tempfile.gettempdir(), "omniopd-bench-tiny"))
        overrides += [f"local.model={tiny}", f"omniopd.teacher.model={tiny}", "omniopd.similarity=ned"]
    overrides += args.overrides
    if run(str(RECIPE), overrides) != 0:
        sys.exit(1)
    rows = read_metrics(Path(out) / "metrics.jsonl")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"{len(rows)} steps of {RECIPE.name} {'(tiny model)' if args.tiny else ''}; "
        f"{rows[0]['audit/rows']:.0f} responses/step, mean response {statistics.mean(r['rollout/response_len_mean'] for r in rows):.0f} tokens"
    )
    print(f"{'stage':<12}" + "".join(f"{'step ' + str(r['step']):>10}" for r in rows) + f"{'share':>8}")
    total = sum(r["time/step"] for r in rows)
    for stage in STAGES:
        values = [r.get(f"time/{stage}", 0.0) for r in rows]
        print(f"{stage:<12}" + "".join(f"{v:>10.1f}" for v in values) + f"{sum(values) / total:>8.0%}")
    print(f"{'step':<12}" + "".join(f"{r['time/step']:>10.1f}" for r in rows))
    print(
        f"teacher seconds/step (inside audit): {statistics.mean(r.get('teacher/seconds', 0) for r in rows):.1f}; "
        f"similarity seconds/step: {statistics.mean(r.get('similarity/seconds', 0) for r in rows):.1f}"
    )
    print(f"process CPU time: user {usage.ru_utime:.0f} s + sys {usage.ru_stime:.0f} s (includes model loads)")
    print("note: wall times on a shared CPU are noisy; compare shares within one run")
    return rows


if __name__ == "__main__":
    main()
