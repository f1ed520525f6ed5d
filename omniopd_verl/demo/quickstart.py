"""`make demo`: does OmniOPD move a student toward its teacher? Two arms, one pre-declared metric, a CI.

Runs recipes/quickstart_cpu/quickstart_cpu.yaml on the local engine, offline: SmolLM2-135M-Instruct on
GSM8K prompts, taught by the demonstration teacher (omniopd_verl/teachers/steering.py: the same base model
with its arithmetic tokens' logits raised, so its texts differ measurably from the student's).
  1. Before training: a fixed held-out set (the initial student's responses to held-out GSM8K test
     prompts, anchors chosen by the scheduler, N teacher continuations and N initial-student
     continuations at each), and how the teacher's texts differ from the student's (arithmetic-token
     share; how much less likely the student finds them).
  2. The OmniOPD arm trains local.steps steps.
  3. The control arm trains identically, except that pi_hat is shuffled across each batch's chunks
     (local.control=shuffle_pi_hat): same rollouts machinery, teacher calls, advantage distribution.
     Each of 1-3 runs in its own process (omniopd_verl/demo/phases.py): the held-out set first, then the two
     arms side by side at half the cores each (a demo process keeps about one core busy at any thread
     count, so this doubles the steps a 2-core machine trains in the same wall time); --sequential trains
     them one after the other, with half the peak memory.
  4. The primary metric (omniopd_verl/local/paired_eval.py, `steered_token_mass_change`, declared
     before this version's runs): the change in the probability the student gives the teacher's
     favoured tokens as its next token, at every position of the initial student's own held-out
     continuations (fixed texts: no sampling after training), with a bootstrap 95% CI over held-out
     prompts, per arm, and the arms' difference. The earlier metric (teacher minus base log-likelihood
     change) is reported as secondary: any drift raises it (paired_eval.py says why). Written to
     runs/demo/summary.json and printed in plain words.

Usage: python -m omniopd_verl.demo [--seed N] [--out DIR] [--sequential] [key=value ...]
  --seed N   every seed of the run (rollouts, teacher, held-out set, control permutation, bootstrap): local.seed
             and omniopd.seed; `make demo SEED=N`. scripts/demo_seed_sweep.py runs seeds 0-9.
  --out DIR  where summary.json and both arms' outputs go (default runs/demo under the current folder)
  --sequential  the arms one after the other (peak ~6 GB instead of ~12 GB, about twice the wall time)
  key=value  overrides for both arms, e.g. local.steps=2
Everything it reads ships in the package (the recipe and a GSM8K subset), so it runs from any folder.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omniopd_verl.package_files import QUICKSTART_RECIPE, package_file

RECIPE = package_file(QUICKSTART_RECIPE)  # recipes/quickstart_cpu/quickstart_cpu.yaml links to it
DEFAULT_OUT = "runs/demo"

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


def percent(nat_per_token: float) -> float:
    """A change of log-likelihood per token as a percentage change of the per-token likelihood."""
    return 100.0 * (math.exp(nat_per_token) - 1.0)


def higher_or_lower(nat_per_token: float) -> str:
    change = percent(nat_per_token)
    return f"{abs(change):.1f}% {'higher' if change >= 0 else 'lower'}"


def effect_shown(arm: dict, control: dict, diff: dict) -> bool:
    """The demo's pre-declared criterion: the arm's CI above 0, and the control's CI covering 0 or the
    arms' difference's CI above 0."""
    control_null = control["ci95"][0] <= 0 <= control["ci95"][1]
    return arm["ci95"][0] > 0 and (control_null or diff["ci95"][0] > 0)


def format_result(summary: dict) -> str:
    arm, ctrl, diff = summary, summary["control"], summary["arm_minus_control"]
    pts = 100.0  # the mass is a probability: shown in percentage points

    def line(label, r):
        lo, hi = r["ci95"]
        return f"  {label:<28}{pts * r['effect']:>+8.2f} pts  [{pts * lo:+.2f}, {pts * hi:+.2f}]"

    before, target = arm["before"], summary["teacher_mass"]
    lines = [
        f"primary metric ({summary['metric']}): the student's probability of the teacher's favoured tokens, "
        f"95% bootstrap CI over {arm['prompts']} held-out prompts ({arm['prefixes']} prefixes):",
        line("OmniOPD arm", arm),
        line("control (pi_hat shuffled)", ctrl),
        line("arm minus control", diff),
        "",
        f"In plain words: at the held-out contexts the student's chance of writing one of the teacher's favoured "
        f"tokens next went from {pts * before:.2f}% to {pts * arm['after']:.2f}% "
        f"({100 * arm['effect'] / before:+.1f}% relative; the teacher itself: {pts * target:.2f}%); "
        f"control: {pts * ctrl['before']:.2f}% to {pts * ctrl['after']:.2f}% ({100 * ctrl['effect'] / before:+.1f}%).",
        "Effect shown (arm CI above 0, and the control CI covering 0 or the difference's CI above 0)."
        if effect_shown(arm, ctrl, diff)
        else "Effect NOT shown at this setting: the intervals above do not separate the arm from 0 and the control.",
    ]
    gap = summary.get("secondary")
    if gap:
        a, c = gap["omniopd"], gap["control"]
        lines += [
            "",
            f"secondary ({gap['metric']}, biased upward by any drift): the student gives the teacher's continuations "
            f"{higher_or_lower(a['effect'])} likelihood per token relative to its own initial continuations "
            f"({a['effect']:+.3f} [{a['ci95'][0]:+.3f}, {a['ci95'][1]:+.3f}] nat/token); control: "
            f"{higher_or_lower(c['effect'])} ({c['effect']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]).",
        ]
    return "\n".join(lines)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_args(argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m omniopd_verl.demo", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument("--seed", type=int, default=None, help="every seed of the run (default: the recipe's, 0)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default runs/demo)")
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="train the two arms one after the other (peak ~6 GB instead of ~12 GB; about twice the wall time)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides for both arms, e.g. local.steps=2")
    return parser.parse_args(argv)


def arm_threads(parallel: bool) -> str:
    """OMP_NUM_THREADS for an arm's process: the user's setting, else half the usable cores when the two arms
    run side by side (a demo process keeps about one core busy at any thread count)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return os.environ["OMP_NUM_THREADS"]
    cores = len(os.sched_getaffinity(0))
    return str(max(1, cores // 2) if parallel else cores)


@dataclass
class Phase:
    """One worker process of the demo (omniopd_verl/demo/phases.py) and what it cost."""

    label: str
    proc: subprocess.Popen
    log: Path | None
    started: float
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    code: int | None = None


def start_phase(label: str, phase: str, out: Path, overrides: list[str], *, threads: str | None, log: Path | None):
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
    cmd = [sys.executable, "-m", "omniopd_verl.demo.phases", "--out", str(out), phase, *overrides]
    handle = open(log, "w") if log else None  # noqa: SIM115 - closed below, once the child has its copy
    proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT if handle else None)
    if handle:
        handle.close()  # the child holds its own copy
    return Phase(label, proc, log, started=time.perf_counter())


def wait_phase(phase: Phase, *, block: bool = True) -> bool:
    """Reap the process (os.wait4, for its CPU time and peak memory); False while it still runs (block=False)."""
    pid, status, usage = os.wait4(phase.proc.pid, 0 if block else os.WNOHANG)
    if pid == 0:
        return False
    phase.proc.returncode = phase.code = os.waitstatus_to_exitcode(status)
    phase.wall_s = time.perf_counter() - phase.started
    phase.cpu_s = usage.ru_utime + usage.ru_stime
    phase.peak_rss_mb = usage.ru_maxrss / 1024
    return True


def failed(phase: Phase) -> int:
    print(f"the demo's {phase.label} process exited {phase.code}", file=sys.stderr)
    if phase.log is not None and phase.log.exists():
        print("".join(phase.log.read_text().splitlines(keepends=True)[-30:]), file=sys.stderr)
        print(f"(whole log: {phase.log})", file=sys.stderr)
    return phase.code or 1


def steps_done(output_dir: Path) -> int:
    path = output_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def train_arms(arms: dict[str, tuple[Path, list[str]]], out: Path, *, parallel: bool, steps: int) -> dict[str, Phase]:
    """Train the arms (side by side, or one after the other) and report progress from their metrics files."""
    threads = arm_threads(parallel)
    done: dict[str, Phase] = {}
    batches = [list(arms)] if parallel else [[label] for label in arms]
    for batch in batches:
        running = {
            label: start_phase(label, "train", out, arms[label][1], threads=threads, log=out / f"{label}.log")
            for label in batch
        }
        print(
            f"training {' and '.join(batch)} ({'side by side, ' if len(batch) > 1 else ''}{threads} thread(s) "
            f"each; logs {', '.join(str(p.log) for p in running.values())})",
            flush=True,
        )
        last = None
        while running:
            progress = ", ".join(f"{label} step {steps_done(arms[label][0])}/{steps}" for label in batch)
            if progress != last:
                print(f"  {progress}", flush=True)
                last = progress
            for label, phase in list(running.items()):
                if wait_phase(phase, block=False):
                    done[label] = running.pop(label)
                    print(f"  {label}: done in {phase.wall_s:.0f} s (exit {phase.code})", flush=True)
            time.sleep(2 if running else 0)
    return done


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    OUT = Path(args.out)
    from omniopd_verl.local import paired_eval as pe
    from omniopd_verl.local.config import load_run_config
    from omniopd_verl.local.metrics import read_metrics

    t0 = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    # a demo always starts from the initial student, never from an older demo's checkpoint; its arms are
    # measured in their own process, so they keep no 1.6 GB checkpoint
    base = ["local.resume=false", "local.save_final=false", *args.overrides]
    if args.seed is not None:  # after the user's overrides: --seed wins
        base += [f"local.seed={args.seed}", f"omniopd.seed={args.seed}"]
    arms = {
        "omniopd": (OUT / "omniopd", [*base, f"local.output_dir={OUT / 'omniopd'}"]),
        "control": (OUT / "control", [*base, f"local.output_dir={OUT / 'control'}", "local.control=shuffle_pi_hat"]),
    }
    arm_cfg = load_run_config(str(RECIPE), arms["omniopd"][1])  # both configs are checked here, before any model loads
    load_run_config(str(RECIPE), arms["control"][1])
    o, loc = arm_cfg.omniopd, arm_cfg.local
    parallel = not args.sequential
    print(f"OmniOPD demo: {RECIPE.name}", flush=True)
    print(
        f"student {loc.model}; teacher {o.teacher.name}:{o.teacher.model} (a demonstration teacher); "
        f"similarity {o.similarity}; advantage {o.advantage}; M={o.chunks} N={o.samples} C={o.chunk_len}; "
        f"{loc.steps} steps x {loc.batch_size} responses, lr {loc.lr}; two arms (OmniOPD, control)",
        flush=True,
    )
    if o.advantage != "posterior":
        print(f"note: advantage '{o.advantage}' is an ablation of the spec's 'posterior' (ALGORITHM.md step 6)")

    print("\n[1/4] held-out set from the initial student (rollout, teacher, base samples, scoring)", flush=True)
    prep = start_phase("prepare", "prepare", OUT, arms["omniopd"][1], threads=None, log=None)
    wait_phase(prep)
    if prep.code != 0:
        return failed(prep)
    items = pe.load_items(OUT / "heldout_set.jsonl")
    initial = json.loads((OUT / "initial.json").read_text())
    before, teacher_mass, share = initial["before"], initial["teacher_mass"], initial["token_share"]
    mass0, gap0 = pe.mean_over_prompts(items, before["mass"]), pe.mean_over_prompts(items, before["gap"])
    print(f"the teacher is steered: {initial['steer']}")
    print(f"the teacher differs from the student, before any training ({len(items)} held-out prefixes):")
    print(
        f"  next-token probability of its favoured '{initial['steer_tokens']}' tokens at the student's own held-out "
        f"contexts: teacher {teacher_mass:.1%}, student {mass0:.1%}"
    )
    print(f"  share of those tokens in the texts: teacher's {share['teacher']:.1%}, student's own {share['base']:.1%}")
    print(
        f"  the initial student gives the teacher's texts {abs(percent(gap0)):.1f}% {'lower' if gap0 < 0 else 'higher'} "
        f"likelihood per token than its own ({gap0:+.3f} nat/token)"
    )

    print("\n[2-3/4] training the OmniOPD arm and the control arm (pi_hat shuffled)", flush=True)
    phases = train_arms(arms, OUT, parallel=parallel, steps=loc.steps)
    for phase in phases.values():
        if phase.code != 0:
            return failed(phase)
    results = {}
    for label, (output_dir, _) in arms.items():
        summary = json.loads((output_dir / "summary.json").read_text())
        paired = json.loads((output_dir / "eval.json").read_text())["paired"]
        results[label] = {"paired": paired, "summary": summary, "rows": read_metrics(Path(summary["metrics"]))}

    print("\n[4/4] results", flush=True)
    arm, ctrl = results["omniopd"]["paired"], results["control"]["paired"]
    diff = pe.arm_minus_control(items, arm["after"]["mass"], ctrl["after"]["mass"], seed=loc.seed)
    seconds = time.perf_counter() - t0
    arm_peaks = [p.peak_rss_mb for p in phases.values()]
    keep = ("effect", "ci95", "t_ci95", "before", "after")
    summary = {
        "metric": pe.METRIC,
        "metric_description": pe.METRIC_TEXT,
        **{k: arm["mass"][k] for k in (*keep, "prompts", "prefixes")},
        "control": {k: ctrl["mass"][k] for k in keep},
        "arm_minus_control": diff,
        "effect_shown": effect_shown(arm["mass"], ctrl["mass"], diff),
        "teacher_mass": teacher_mass,
        "secondary": {
            "metric": pe.GAP_METRIC,
            "metric_description": pe.GAP_METRIC_TEXT,
            "omniopd": {k: arm["gap"][k] for k in keep},
            "control": {k: ctrl["gap"][k] for k in keep},
            "arm_minus_control": pe.arm_minus_control(items, arm["after"]["gap"], ctrl["after"]["gap"], seed=loc.seed),
        },
        "initial": {"token_mass": mass0, "gap_nat_per_token": gap0, "token_share": share},
        "setting": {
            "advantage": o.advantage,
            "similarity": o.similarity,
            "steer": initial["steer"],
            "steps": loc.steps,
            "lr": loc.lr,
            "M": o.chunks,
            "N": o.samples,
            "C": o.chunk_len,
            "batch": loc.batch_size,
            "heldout_prompts": loc.data.heldout_prompts,
            "arms": "side by side" if parallel else "one after the other",
            "arm_threads": arm_threads(parallel),
        },
        "seed": loc.seed,
        "seeds": {"local.seed": loc.seed, "omniopd.seed": o.seed},
        "seconds": seconds,
        "cpu_seconds": prep.cpu_s + sum(p.cpu_s for p in phases.values()),
        # the most memory the demo's processes held at once: the prepare process alone, then the arms
        # (their peaks added when they run side by side: an upper bound of what they held together)
        "peak_rss_mb": peak_rss_mb() + max(prep.peak_rss_mb, sum(arm_peaks) if parallel else max(arm_peaks)),
        "peak_rss_mb_by_process": {"demo": peak_rss_mb(), "prepare": prep.peak_rss_mb}
        | {label: p.peak_rss_mb for label, p in phases.items()},
        "teacher_build_seconds": 0.0,  # the steered teacher needs no build: it is the base model plus a bias
    }
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2))
    for label in ("omniopd", "control"):
        print(f"\n{label} arm, per step:")
        print(format_table(results[label]["rows"]))
    print()
    print(format_result(summary))
    print(
        f"\nsummary: {OUT / 'summary.json'}; audit report of the last step: {results['omniopd']['summary']['report']}"
    )
    print(
        f"total time: {seconds:.0f} s ({summary['cpu_seconds'] / 60:.1f} CPU-minutes); peak memory "
        f"{summary['peak_rss_mb']:.0f} MB (the processes running at once, added)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
