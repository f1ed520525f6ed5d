"""`make demo-sweep`: does the demo's verdict hold across seeds? Runs `python -m omniopd_verl.demo --seed S`.

One fresh process per seed (default seeds 0-9; every seed of the run: rollouts, teacher, held-out set,
control permutation, bootstrap), each writing <out>/seed<S>/summary.json. Prints one table: per seed the
OmniOPD arm, the control and their difference (percentage points, 95% bootstrap CI over held-out prompts),
the pre-declared verdict ("effect shown": the arm's CI above 0, and the control's CI covering 0 or the
difference's CI above 0), the wall time and the peak memory of that seed's process, then the count of
seeds that showed the effect, and the mean and spread of the effect across seeds. The table also goes to
<out>/sweep.md. A seed whose summary.json exists already is read, not rerun (delete it to rerun).

Usage: python scripts/demo_seed_sweep.py [--seeds 0-9 | --seeds 0,3,5] [--out runs/demo_sweep] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def parse_seeds(text: str) -> list[int]:
    if "-" in text and "," not in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",") if s.strip()]


def run_seed(seed: int, out: Path, overrides: list[str]) -> dict:
    """One demo in a fresh process; its summary plus this process's wall time and peak RSS (os.wait4)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "omniopd_verl.demo", "--seed", str(seed), "--out", str(out), *overrides]
    t0 = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"seed {seed}: the demo exited {code}; its log: {out / 'log.txt'}")
    summary = json.loads((out / "summary.json").read_text())
    summary["sweep"] = {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "largest_process_rss_mb": usage.ru_maxrss / 1024,
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def ci(r: dict) -> str:
    return f"{100 * r['effect']:+.2f} [{100 * r['ci95'][0]:+.2f}, {100 * r['ci95'][1]:+.2f}]"


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def table(rows: dict[int, dict]) -> str:
    lines = [
        "| seed | OmniOPD arm (pts) | control (pts) | arm - control (pts) | verdict | wall min | CPU min | peak RSS GB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seed, s in rows.items():
        sweep = s.get("sweep", {})
        wall = sweep.get("wall_s", s["seconds"])
        # the demo's own figure: its processes that ran at once, added (the sweep's wait4 sees only the largest)
        rss = s.get("peak_rss_mb", sweep.get("peak_rss_mb", float("nan")))
        verdict = "effect shown" if s["effect_shown"] else "NOT shown"
        lines.append(
            f"| {seed} | {ci(s)} | {ci(s['control'])} | {ci(s['arm_minus_control'])} | {verdict} | "
            f"{wall / 60:.1f} | {sweep.get('cpu_s', float('nan')) / 60:.1f} | {rss / 1024:.2f} |"
        )
    shown = sum(s["effect_shown"] for s in rows.values())
    effects = [100 * s["effect"] for s in rows.values()]
    diffs = [100 * s["arm_minus_control"]["effect"] for s in rows.values()]
    lines += [
        "",
        f"effect shown in {shown} of {len(rows)} seeds; across seeds the arm's effect is "
        f"{statistics.mean(effects):+.2f} pts (sd {spread(effects):.2f}), arm - control "
        f"{statistics.mean(diffs):+.2f} pts (sd {spread(diffs):.2f}); longest seed "
        f"{max(s.get('sweep', {}).get('wall_s', s['seconds']) for s in rows.values()) / 60:.1f} min.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--seeds", default="0-9", help="a range like 0-9 or a list like 0,3,5")
    parser.add_argument("--out", default="runs/demo_sweep")
    parser.add_argument("overrides", nargs="*", help="key=value overrides passed to every demo")
    args = parser.parse_args()
    root = Path(args.out)
    rows = {}
    for seed in parse_seeds(args.seeds):
        out = root / f"seed{seed}"
        if (out / "summary.json").is_file() and "sweep" in json.loads((out / "summary.json").read_text()):
            rows[seed] = json.loads((out / "summary.json").read_text())
        else:
            rows[seed] = run_seed(seed, out, args.overrides)
        print(f"seed {seed}: {'effect shown' if rows[seed]['effect_shown'] else 'NOT shown'}", flush=True)
    text = table(rows)
    (root / "sweep.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
