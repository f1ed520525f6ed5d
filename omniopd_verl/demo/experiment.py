"""`make experiment`: the paper's comparison at small scale, on CPU, with the demo's metric and control, over seeds.

Trains the same student (SmolLM2-135M-Instruct) against the same demonstration teacher (the quickstart
recipe, pkg://omniopd_verl.config/local/quickstart_cpu.yaml) in several arms, for each of `--seeds` (default
0,1,2: every seed of the run, the held-out set included). Within one seed every arm is scored on ONE fixed
held-out set with the demo's primary metric (omniopd_verl/local/paired_eval.py, steered_token_mass_change:
the student's next-token probability of the teacher's favoured tokens at fixed held-out contexts,
percentage points, bootstrap 95% CI over held-out prompts; the teacher-minus-base log-likelihood change
alongside as the secondary, drift-biased measure):

  centered        OmniOPD, advantage centered_batch, peak-entropy scheduler, embedding similarity (the demo)
  posterior       OmniOPD, the spec's advantage 'posterior'
  random_sched    OmniOPD, random anchors instead of peak entropy
  ned             OmniOPD, normalised edit similarity instead of embedding
  seqkd           SeqKD: SFT on the teacher's complete answers to the same prompts, at (at least) equal teacher
                  completion tokens (local.method=seqkd): the baseline a black-box, text-only teacher allows
  token_opd       white-box token-level OPD (local.method=token_opd): needs the teacher's log-probs, which an
                  API does not give; the white-box reference
  control         centered, with pi_hat shuffled across each batch's chunks (no teacher information)

Across seeds each arm reports the mean effect, the seed-level spread (sd, and a t 95% CI over seeds, which
with 3 seeds is wide: t = 4.30) and in how many seeds its own interval and its difference from the control
were above 0. A comparison holds only where it holds across seeds. With `--eval-every K` the metric is also
computed every K steps (off by default: it costs ~9 CPU-minutes a seed), for the plot (mean over seeds, band =
min..max; without it the plot joins step 0 to the last step). Writes runs/experiment/results.json, a Markdown
table (runs/experiment/results.md) and a PNG (runs/experiment/primary_metric.png; `--docs DIR` copies table and
plot there). Arms and seeds run one after another. Each finished arm is kept in
runs/experiment/seed<S>/<arm>/arm_result.json with the overrides it ran; a later run with the same overrides
reads it instead of rerunning that arm, so the work can be split over processes (two at a time on 2 cores,
with OMP_NUM_THREADS=1: `make experiment` runs `--seeds 0` then half of seed 2's arms in one, `--seeds 1` then
the other half in the other) and a final `--seeds 0,1,2` run reads them all and writes the table. Every arm of a
seed must have been scored on the same held-out set (checked). Delete a file to rerun that arm.

Usage: python -m omniopd_verl.demo.experiment [--arms a,b,...] [--seeds 0,1,2] [--eval-every 0] [--label TEXT] [key=value ...]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from omniopd_verl.package_files import QUICKSTART_RECIPE, package_file
from omniopd_verl.runtime.cpu_allocator import release_free_memory

RECIPE = package_file(QUICKSTART_RECIPE)  # recipes/quickstart_cpu/quickstart_cpu.yaml links to it
OUT = Path("runs/experiment")
# Arms compare effects smaller than the demo's arm-vs-control one, so the experiment scores a larger
# held-out set than the 15-minute demo can afford (40 prompts, ~80 prefixes); an override on the command
# line (local.data.heldout_prompts=...) comes later and wins.
# It pins 4 prompts x 8 steps (whatever the demo recipe says): 7 arms x 3 seeds must fit 90 minutes on 2 idle cores
# (a seed is ~40 CPU-minutes and runs on one core; at 6 prompts it would not fit).
DEFAULTS = ["local.data.heldout_prompts=40", "local.prompts_per_step=4", "local.steps=8"]

ARMS: dict[str, list[str]] = {
    "centered": [],
    "posterior": ["omniopd.advantage=posterior"],
    "random_sched": ["omniopd.scheduler=random"],
    "ned": ["omniopd.similarity=ned"],
    "seqkd": ["local.method=seqkd"],  # + responses_per_prompt for equal teacher tokens (seqkd_answers)
    "token_opd": ["local.method=token_opd"],
    "control": ["local.control=shuffle_pi_hat"],
}
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def seqkd_answers(omniopd, local) -> int:
    """Answers per prompt so that SeqKD's teacher completion tokens per step are at least OmniOPD's:
    M x N x C per response x responses_per_prompt, over max_new_tokens per answer."""
    return math.ceil(
        omniopd.chunks * omniopd.samples * omniopd.chunk_len * local.responses_per_prompt / local.max_new_tokens
    )


def across_seeds(values: list[float]) -> dict:
    """Mean, sd and the t 95% CI over seeds (None with one seed)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "sd": None, "ci95": None, "values": values}
    sd = statistics.stdev(values)
    half = T95.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values))
    return {"mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "values": values}


def _commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def markdown_table(arms: dict, meta: dict) -> str:
    def pts(x):
        return f"{100 * x:+.2f}"

    def seed_ci(a):
        return f"{pts(a['mean'])} [{pts(a['ci95'][0])}, {pts(a['ci95'][1])}]" if a["ci95"] else pts(a["mean"])

    S = len(meta["seeds"])
    lines = [
        f"{meta['label']}: {meta['date']}, commit {meta['commit']}, {meta['machine']}; seeds {meta['seeds']}; "
        f"{meta['steps']} steps per arm; per seed {meta['prompts']} held-out prompts. Primary: change in the "
        f"student's probability of the teacher's favoured tokens (percentage points; initial "
        f"{100 * meta['mass_before']:.2f}%, teacher {100 * meta['teacher_mass']:.2f}%, means over seeds). "
        f"Mean over seeds with the t 95% CI over seeds (the seed-level spread); 'CI > 0 in' counts the seeds whose "
        "own bootstrap CI over held-out prompts is above 0. Secondary: teacher-minus-base log-likelihood change "
        "(nat/token, biased upward by any drift).",
        "",
        "| arm | primary, mean [seed CI] | per seed | CI > 0 in | minus control, mean [seed CI] | above control in | "
        "secondary (nat/token) | teacher tokens | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, a in arms.items():
        d = a.get("minus_control")
        above = f"{a['above_control']}/{S}" if d else "—"
        lines.append(
            f"| {name} | {seed_ci(a['primary'])} | {', '.join(pts(v) for v in a['primary']['values'])} | "
            f"{a['primary_above_0']}/{S} | {seed_ci(d) if d else '—'} | {above} | {a['secondary']['mean']:+.4f} | "
            f"{a['teacher_tokens']:.0f} | {a['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(arms: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, a in arms.items():
        curves = a["curves"]  # one per seed, same steps
        steps = [0] + [p["step"] for p in curves[0]]
        per_step = list(zip(*[[0.0] + [100 * p["effect"] for p in c] for c in curves], strict=True))
        (line,) = ax.plot(steps, [statistics.fmean(v) for v in per_step], marker="o", label=name)
        ax.fill_between(
            steps, [min(v) for v in per_step], [max(v) for v in per_step], color=line.get_color(), alpha=0.12
        )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("change in P(teacher's favoured tokens), pts")
    ax.set_title(title + " (mean over seeds, band min..max)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def items_digest(items) -> str:
    """A held-out set's fingerprint: every arm of a seed must be scored on the same one (they pair by prefix)."""
    from dataclasses import asdict

    return hashlib.sha256(json.dumps([asdict(it) for it in items]).encode()).hexdigest()[:16]


def load_arm(path: Path, arm: list[str], base: list[str], eval_every: int) -> dict | None:
    """A finished arm's saved record, if it ran with exactly these overrides and evaluation steps; else None."""
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved["arm"] != arm or saved["base"] != base or saved["eval_every"] != eval_every:
        print(f"{path} was made with other overrides or --eval-every: that arm runs again", flush=True)
        return None
    return saved


def run_seed(seed: int, arms: list[str], base: list[str], out: Path, eval_every: int) -> dict[str, dict]:
    """Every arm for one seed, on one held-out set built from that seed: arm -> its record (saved in
    out/<arm>/arm_result.json, read instead of rerun when it exists with the same overrides, so that one seed's
    arms can be split over processes). The held-out set is built by the first arm that runs, with its audit (its
    chunk positions): a split's processes must each start with an arm that places chunks as the others do
    (not random_sched); seed_results() refuses arms scored on different sets."""
    from omniopd_verl.local import paired_eval as pe
    from omniopd_verl.local.config import load_run_config
    from omniopd_verl.local.metrics import read_metrics
    from omniopd_verl.local.train import LocalTrainer

    seeded = [*base, f"local.seed={seed}", f"omniopd.seed={seed}"]
    cfg0 = load_run_config(str(RECIPE), seeded)
    extra = {"seqkd": [f"local.responses_per_prompt={seqkd_answers(cfg0.omniopd, cfg0.local)}"]}
    heldout, target, records = None, {}, {}
    for name in arms:
        arm = [*ARMS[name], *extra.get(name, [])]
        path = out / name / "arm_result.json"
        saved = load_arm(path, arm, base, eval_every)
        if saved is not None:
            print(f"seed {seed}, arm {name}: read from {path} (commit {saved['commit']})", flush=True)
            records[name] = saved
            continue
        cfg = load_run_config(str(RECIPE), [*seeded, *arm, f"local.output_dir={out / name}"])
        print(f"\n== seed {seed}, arm {name}: {' '.join(arm) or '(the demo setting)'}", flush=True)
        t0 = time.perf_counter()
        trainer = LocalTrainer(cfg)
        if heldout is None:  # one held-out set for every arm of this seed (built with the recipe's teacher)
            t_set = time.perf_counter()
            heldout = trainer.heldout.prepare(trainer.heldout_problems)
            # two processes may build this seed's set at once (make experiment splits seed 2): replace, not interleave
            tmp = out / f"heldout_set.jsonl.{os.getpid()}"
            pe.save_items(heldout[0], tmp)
            os.replace(tmp, out / "heldout_set.jsonl")
            teacher_mass = trainer.heldout.teacher_mass(heldout[0])
            target = {
                "mass_before": pe.mean_over_prompts(heldout[0], heldout[1]["mass"]),
                "teacher_mass": pe.mean_over_prompts(heldout[0], teacher_mass),
                "heldout_set_seconds": time.perf_counter() - t_set,
            }
            t0 += target["heldout_set_seconds"]  # an arm's wall time excludes the shared held-out set
        items, before = heldout
        curve = []

        def on_step(tr, metrics, curve=curve, steps=cfg.local.steps, items=items, before=before):
            if eval_every and tr.step % eval_every == 0 and tr.step < steps:  # the last step: fit()'s own evaluation
                r = pe.paired_change(items, before["mass"], tr.heldout.measure(tr.model, items)["mass"], seed=seed)
                curve.append({"step": tr.step, "effect": r["effect"], "ci95": r["ci95"]})

        summary = trainer.fit(heldout=heldout, on_step=on_step)
        trainer.close()
        del trainer
        gc.collect()
        release_free_memory()  # the next arm starts from the freed heap, not on top of it
        final = json.loads((Path(cfg.local.output_dir) / "eval.json").read_text())["paired"]
        curve.append({"step": cfg.local.steps, "effect": final["mass"]["effect"], "ci95": final["mass"]["ci95"]})
        rows = read_metrics(Path(summary["metrics"]))
        result = {
            "overrides": arm,
            **{k: final["mass"][k] for k in ("effect", "ci95", "t_ci95", "before", "after")},
            "secondary": {k: final["gap"][k] for k in ("metric", "effect", "ci95", "t_ci95")},
            "curve": curve,
            "teacher_calls": sum(r.get("teacher/calls", 0.0) for r in rows),
            "teacher_tokens": sum(
                r.get("teacher/completion_tokens", 0.0) + r.get("teacher/prompt_tokens", 0.0) for r in rows
            ),
            "teacher_completion_tokens": sum(r.get("teacher/completion_tokens", 0.0) for r in rows),
            "seconds": time.perf_counter() - t0,
        }
        records[name] = {
            "arm": arm,
            "base": base,
            "eval_every": eval_every,
            "result": result,
            "after_mass": final["after"]["mass"],  # per prefix: the control difference is taken across arms
            "target": target,
            "heldout_digest": items_digest(items),
            "prompts": len({it.prompt_id for it in items}),
            "prefixes": len(items),
            "commit": _commit(),
        }
        path.write_text(json.dumps(records[name], indent=2))
        print(
            f"   seed {seed}, {name}: {100 * final['mass']['effect']:+.2f} pts [{100 * final['mass']['ci95'][0]:+.2f}, "
            f"{100 * final['mass']['ci95'][1]:+.2f}]; secondary {final['gap']['effect']:+.4f} nat/token",
            flush=True,
        )
    return records


def seed_results(seed: int, records: dict[str, dict], out: Path) -> dict[str, dict]:
    """One seed's arm results, each arm other than the control with its paired difference from the control."""
    from omniopd_verl.local import paired_eval as pe

    digests = {name: r["heldout_digest"] for name, r in records.items()}
    if len(set(digests.values())) != 1:
        raise RuntimeError(
            f"seed {seed}: the arms were scored on different held-out sets ({digests}); delete "
            f"{out}/<arm>/arm_result.json of the arms to rerun"
        )
    results = {name: dict(r["result"]) for name, r in records.items()}
    if "control" in records:
        items = pe.load_items(out / "heldout_set.jsonl")
        if items_digest(items) != next(iter(digests.values())):
            raise RuntimeError(f"{out / 'heldout_set.jsonl'} is not the set the arms were scored on: rerun the seed")
        ctrl = records["control"]["after_mass"]
        for name, r in records.items():
            if name != "control":
                results[name]["minus_control"] = pe.arm_minus_control(items, r["after_mass"], ctrl, seed=seed)
    return results


def aggregate(per_seed: dict[int, dict]) -> dict:
    """Per arm: its effect and its difference from the control across seeds."""
    seeds = list(per_seed)
    arms = {}
    for name in per_seed[seeds[0]]:
        runs = [per_seed[s][name] for s in seeds]
        a = {
            "primary": across_seeds([r["effect"] for r in runs]),
            "primary_above_0": sum(r["ci95"][0] > 0 for r in runs),
            "secondary": across_seeds([r["secondary"]["effect"] for r in runs]),
            "curves": [r["curve"] for r in runs],
            "teacher_calls": statistics.fmean(r["teacher_calls"] for r in runs),
            "teacher_tokens": statistics.fmean(r["teacher_tokens"] for r in runs),
            "seconds": statistics.fmean(r["seconds"] for r in runs),
        }
        if "minus_control" in runs[0]:
            a["minus_control"] = across_seeds([r["minus_control"]["effect"] for r in runs])
            a["above_control"] = sum(r["minus_control"]["ci95"][0] > 0 for r in runs)
        arms[name] = a
    return arms


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {list(ARMS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; every arm runs once per seed")
    parser.add_argument(
        "--eval-every", type=int, default=0, help="also score the held-out set every K steps (0: only at the end)"
    )
    parser.add_argument("--label", default="CPU, small scale")
    parser.add_argument("--docs", default=None, help="also copy the table and the plot into this folder")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every arm, e.g. local.steps=4")
    args = parser.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        print(f"--arms {unknown} are not known: allowed {list(ARMS)}", file=sys.stderr)
        return 2
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        print(f"--seeds {args.seeds!r} is invalid: allowed distinct integers separated by commas", file=sys.stderr)
        return 2

    if args.eval_every < 0:
        print(
            f"--eval-every {args.eval_every} is invalid: allowed 0 (only at the end) or a step count", file=sys.stderr
        )
        return 2

    from omniopd_verl.local.config import load_run_config

    t_all, load0 = time.perf_counter(), os.getloadavg()[0]
    OUT.mkdir(parents=True, exist_ok=True)
    overrides = [*DEFAULTS, *args.overrides]
    # the arms are measured in this process: no 1.6 GB checkpoint per arm (a seed would write ~11 GB)
    # the warmup stays off (the demo recipe's is not the experiment's): the three recorded seeds ran without it
    base = ["local.resume=false", "local.save_final=false", "local.lr_warmup_steps=0", *overrides]
    per_seed, targets, prompts, prefixes = {}, {}, 0, 0
    for seed in seeds:
        records = run_seed(seed, arms, base, OUT / f"seed{seed}", args.eval_every)
        per_seed[seed] = seed_results(seed, records, OUT / f"seed{seed}")
        first = next(iter(records.values()))
        targets[seed], prompts, prefixes = first["target"], first["prompts"], first["prefixes"]
    cfg0 = load_run_config(str(RECIPE), base)
    meta = {
        "label": args.label,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load0:.1f} at the start, "
        f"{os.getloadavg()[1]:.1f} over the last 5 min at the end",
        "seeds": seeds,
        "steps": cfg0.local.steps,
        "prompts": prompts,
        "prefixes": prefixes,
        "seconds": time.perf_counter() - t_all,
        "overrides": overrides,
        "mass_before": statistics.fmean(t["mass_before"] for t in targets.values()),
        "teacher_mass": statistics.fmean(t["teacher_mass"] for t in targets.values()),
        "targets": targets,
    }
    summary = aggregate(per_seed)
    (OUT / "results.json").write_text(json.dumps({"meta": meta, "arms": summary, "per_seed": per_seed}, indent=2))
    table = markdown_table(summary, meta)
    (OUT / "results.md").write_text(table)
    plot(summary, OUT / "primary_metric.png", f"{args.label} ({meta['date']}, {meta['commit']})")
    print("\n" + table)
    print(f"results: {OUT / 'results.json'}, plot: {OUT / 'primary_metric.png'}; total {meta['seconds']:.0f} s")
    if args.docs:
        Path(args.docs).mkdir(parents=True, exist_ok=True)
        shutil.copy(OUT / "results.md", Path(args.docs) / "experiment_cpu_small.md")
        shutil.copy(OUT / "primary_metric.png", Path(args.docs) / "experiment_cpu_small.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
