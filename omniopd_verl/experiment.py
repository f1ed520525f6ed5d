"""`make experiment`: the paper's comparison at small scale, on CPU, with the demo's metric and control.

Trains the same student (SmolLM2-135M-Instruct) from the same seeds against the same demonstration
teacher (recipes/quickstart_cpu/quickstart_cpu.yaml) in several arms and scores every arm on ONE fixed
held-out set with the demo's primary metric (omniopd_verl/local/paired_eval.py, steered_token_mass_change:
the student's next-token probability of the teacher's favoured tokens at fixed held-out contexts,
percentage points, bootstrap 95% CI over held-out prompts; the teacher-minus-base log-likelihood change
alongside as the secondary, drift-biased measure):

  centered        OmniOPD, advantage centered_batch, peak-entropy scheduler, embedding similarity (the demo)
  posterior       OmniOPD, the spec's advantage 'posterior'
  random_sched    OmniOPD, random anchors instead of peak entropy
  ned             OmniOPD, normalised edit similarity instead of embedding
  token_opd       white-box token-level OPD (local.method=token_opd), the paper's main baseline
  control         centered, with pi_hat shuffled across each batch's chunks (no teacher information)

The metric is also computed every `--eval-every` steps, for the plot. Writes runs/experiment/results.json,
a Markdown table (runs/experiment/results.md) and a PNG of the metric per step (runs/experiment/
primary_metric.png; `--docs DIR` copies table and plot there). Arms run one after another.

Usage: python -m omniopd_verl.experiment [--arms a,b,...] [--eval-every 2] [--label TEXT] [key=value ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from omniopd_verl.package_files import QUICKSTART_RECIPE, package_file

RECIPE = package_file(QUICKSTART_RECIPE)  # recipes/quickstart_cpu/quickstart_cpu.yaml links to it
OUT = Path("runs/experiment")
# Six arms compare effects smaller than the demo's arm-vs-control one, so the experiment scores a larger
# held-out set than the 15-minute demo can afford (40 prompts, ~80 prefixes); an override on the command
# line (local.data.heldout_prompts=...) comes later and wins.
DEFAULTS = ["local.data.heldout_prompts=40"]

ARMS: dict[str, list[str]] = {
    "centered": [],
    "posterior": ["omniopd.advantage=posterior"],
    "random_sched": ["omniopd.scheduler=random"],
    "ned": ["omniopd.similarity=ned"],
    "token_opd": ["local.method=token_opd"],
    "control": ["local.control=shuffle_pi_hat"],
}


def _commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def markdown_table(results: dict, meta: dict) -> str:
    def ci(r, scale=100.0, fmt="{:+.2f}"):
        return f"{fmt.format(scale * r['effect'])} [{fmt.format(scale * r['ci95'][0])}, {fmt.format(scale * r['ci95'][1])}]"

    lines = [
        f"{meta['label']}: {meta['date']}, commit {meta['commit']}, {meta['machine']}; {meta['steps']} steps per arm, "
        f"{meta['prompts']} held-out prompts ({meta['prefixes']} prefixes). Primary: change in the student's "
        f"probability of the teacher's favoured tokens (percentage points; initial {100 * meta['mass_before']:.2f}%, "
        f"teacher {100 * meta['teacher_mass']:.2f}%). Secondary: teacher-minus-base log-likelihood change "
        "(nat/token, biased upward by any drift). 95% bootstrap CIs over held-out prompts.",
        "",
        "| arm | primary (pts) [95% CI] | minus control [95% CI] | secondary (nat/token) [95% CI] | "
        "teacher calls | teacher tokens | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        d = r.get("minus_control")
        lines.append(
            f"| {name} | {ci(r)} | {ci(d) if d else '—'} | {ci(r['secondary'], 1.0, '{:+.4f}')} | "
            f"{r['teacher_calls']:.0f} | {r['teacher_tokens']:.0f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, r in results.items():
        steps = [0] + [p["step"] for p in r["curve"]]
        vals = [0.0] + [100 * p["effect"] for p in r["curve"]]
        lo = [0.0] + [100 * p["ci95"][0] for p in r["curve"]]
        hi = [0.0] + [100 * p["ci95"][1] for p in r["curve"]]
        (line,) = ax.plot(steps, vals, marker="o", label=name)
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.12)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("change in P(teacher's favoured tokens), pts")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {list(ARMS)}")
    parser.add_argument("--eval-every", type=int, default=4, help="also score the held-out set every K steps")
    parser.add_argument("--label", default="CPU, small scale")
    parser.add_argument("--docs", default=None, help="also copy the table and the plot into this folder")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every arm, e.g. local.steps=4")
    args = parser.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        print(f"--arms {unknown} are not known: allowed {list(ARMS)}", file=sys.stderr)
        return 2

    from omniopd_verl.local import paired_eval as pe
    from omniopd_verl.local.config import load_run_config
    from omniopd_verl.local.metrics import read_metrics
    from omniopd_verl.local.train import LocalTrainer

    t_all, load0 = time.perf_counter(), os.getloadavg()[0]
    OUT.mkdir(parents=True, exist_ok=True)
    overrides = [*DEFAULTS, *args.overrides]
    base = ["local.resume=false", *overrides]
    heldout = None
    results: dict[str, dict] = {}
    for name in arms:
        cfg = load_run_config(str(RECIPE), [*base, *ARMS[name], f"local.output_dir={OUT / name}"])
        print(f"\n== arm {name}: {' '.join(ARMS[name]) or '(the demo setting)'}", flush=True)
        t0 = time.perf_counter()
        trainer = LocalTrainer(cfg)
        if heldout is None:  # one held-out set for every arm (built with the first arm's teacher = the recipe's)
            t_set = time.perf_counter()
            heldout = trainer.prepare_heldout()
            pe.save_items(heldout[0], OUT / "heldout_set.jsonl")
            teacher = trainer.heldout_measure(trainer.ref_model, heldout[0], as_teacher=True)
            target = {
                "mass_before": pe.mean_over_prompts(heldout[0], heldout[1]["mass"]),
                "teacher_mass": pe.mean_over_prompts(heldout[0], teacher["mass"]),
                "heldout_set_seconds": time.perf_counter() - t_set,
            }
            t0 += target["heldout_set_seconds"]  # an arm's wall time excludes the shared held-out set
        items, before = heldout
        curve = []

        def on_step(tr, metrics, curve=curve, steps=cfg.local.steps, items=items, before=before):
            if tr.step % args.eval_every == 0 and tr.step < steps:  # the last step is fit()'s own evaluation
                r = pe.paired_change(
                    items, before["mass"], tr.heldout_measure(tr.model, items)["mass"], seed=tr.cfg.seed
                )
                curve.append({"step": tr.step, "effect": r["effect"], "ci95": r["ci95"]})

        summary = trainer.fit(heldout=heldout, on_step=on_step)
        trainer.close()
        del trainer
        gc.collect()
        final = json.loads((Path(cfg.local.output_dir) / "eval.json").read_text())["paired"]
        curve.append({"step": cfg.local.steps, "effect": final["mass"]["effect"], "ci95": final["mass"]["ci95"]})
        rows = read_metrics(Path(summary["metrics"]))
        results[name] = {
            "overrides": ARMS[name],
            **{k: final["mass"][k] for k in ("effect", "ci95", "t_ci95", "before", "after")},
            "secondary": {k: final["gap"][k] for k in ("metric", "effect", "ci95", "t_ci95")},
            "after_values": final["after"],
            "curve": curve,
            "teacher_calls": sum(r.get("teacher/calls", 0.0) for r in rows),
            "teacher_tokens": sum(
                r.get("teacher/completion_tokens", 0.0) + r.get("teacher/prompt_tokens", 0.0) for r in rows
            ),
            "seconds": time.perf_counter() - t0,
        }
        print(
            f"   {name}: {100 * final['mass']['effect']:+.2f} pts [{100 * final['mass']['ci95'][0]:+.2f}, "
            f"{100 * final['mass']['ci95'][1]:+.2f}]; secondary {final['gap']['effect']:+.4f} nat/token",
            flush=True,
        )
    items = heldout[0]
    if "control" in results:
        for name, r in results.items():
            if name != "control":
                ctrl = results["control"]["after_values"]["mass"]
                r["minus_control"] = pe.arm_minus_control(items, r["after_values"]["mass"], ctrl)
    cfg0 = load_run_config(str(RECIPE), base)
    meta = {
        "label": args.label,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load0:.1f} at the start, "
        f"{os.getloadavg()[1]:.1f} over the last 5 min at the end",
        "steps": cfg0.local.steps,
        "prompts": len({it.prompt_id for it in items}),
        "prefixes": len(items),
        "seconds": time.perf_counter() - t_all,
        "overrides": overrides,
        **target,
    }
    for r in results.values():
        r.pop("after_values", None)
    (OUT / "results.json").write_text(json.dumps({"meta": meta, "arms": results}, indent=2))
    table = markdown_table(results, meta)
    (OUT / "results.md").write_text(table)
    plot(results, OUT / "primary_metric.png", f"{args.label} ({meta['date']}, {meta['commit']})")
    print("\n" + table)
    print(f"results: {OUT / 'results.json'}, plot: {OUT / 'primary_metric.png'}; total {meta['seconds']:.0f} s")
    if args.docs:
        Path(args.docs).mkdir(parents=True, exist_ok=True)
        shutil.copy(OUT / "results.md", Path(args.docs) / "experiment_cpu_small.md")
        shutil.copy(OUT / "primary_metric.png", Path(args.docs) / "experiment_cpu_small.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
