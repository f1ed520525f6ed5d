"""Does the glibc malloc tuning (omniopd_verl/runtime/cpu_allocator.py) help on THIS machine? Tuned vs defaults.

Measures what tests must not: the kernel's minor page faults and wall time of a warm decode call. Each
setting runs in a fresh interpreter (malloc settings are per process and cannot be undone), alternately,
`--reps` times: the real SmolLM2-135M (or --model) samples P prefixes x n continuations once to warm up,
then the timed warm call's minor faults (getrusage) and seconds are recorded. Prints one row per setting
(median over reps) and the ratio default/tuned: > 1 means the tuning helps. The tuning is on by default
in models.load_causal_lm only while this benchmark shows it helps (docs/local.md has the recorded runs).

Moved here from tests/ (issue 19): page-fault counts depend on the kernel and the allocator's history,
not on this project's code; on one machine the tuning faulted 2.3x *more* pages than the defaults.

Usage: python benchmarks/bench_cpu_allocator.py [--model smollm2-135m-instruct] [--prefixes 16] [--n 4]
       [--prefix-tokens 300] [--new-tokens 16] [--reps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

WARM_CALL = """
import resource, time, torch
from omniopd_verl.runtime.cpu_allocator import tune_malloc_for_cpu_inference
from omniopd_verl.runtime.generation import sample_continuations
from omniopd_verl.runtime.models import load_causal_lm

torch.set_num_threads({threads})
model, tok = load_causal_lm({model!r})  # a CPU load applies the tuning unless OMNIOPD_MALLOC_TUNING=0
prefixes = [list(range(100 + i, 100 + i + {prefix_tokens})) for i in range({prefixes})]
kw = dict(n={n}, max_new_tokens={new_tokens}, temperature=1.0, top_p=1.0, seeds=list(range({prefixes})), pad_token_id=0)
sample_continuations(model, prefixes, **kw)
faults0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
sample_continuations(model, prefixes, **kw)
seconds = time.perf_counter() - t0
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT", tune_malloc_for_cpu_inference(), faults, seconds, peak_mb)
"""


def warm_call(args, tuning: str) -> tuple[bool, int, float, float]:
    code = WARM_CALL.format(**vars(args))
    env = {**os.environ, "OMNIOPD_MALLOC_TUNING": tuning, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    _, applied, faults, seconds, peak = line.split()
    return applied == "True", int(faults), float(seconds), float(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prefixes", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--prefix-tokens", type=int, default=300)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    runs: dict[str, list[tuple[bool, int, float, float]]] = {"1": [], "0": []}
    for _ in range(args.reps):  # alternate, so a neighbour's load falls on both settings alike
        for tuning in ("1", "0"):
            runs[tuning].append(warm_call(args, tuning))
    if not all(r[0] for r in runs["1"]):
        print("note: the tuning did not apply here (not glibc?): both rows are the defaults")
    print(
        f"warm decode call: {args.prefixes} prefixes x n={args.n}, {args.prefix_tokens}-token prefixes, "
        f"{args.new_tokens} new tokens, {args.threads} thread(s), median of {args.reps} fresh processes"
    )
    print(f"{'setting':<10}{'minor faults':>14}{'seconds':>10}{'peak RSS MB':>13}")
    med = {}
    for tuning, label in (("1", "tuned"), ("0", "defaults")):
        faults = statistics.median(r[1] for r in runs[tuning])
        seconds = statistics.median(r[2] for r in runs[tuning])
        peak = statistics.median(r[3] for r in runs[tuning])
        med[label] = (faults, seconds)
        print(f"{label:<10}{faults:>14.0f}{seconds:>10.2f}{peak:>13.0f}")
    print(
        f"defaults / tuned: time {med['defaults'][1] / med['tuned'][1]:.2f}x, "
        f"faults {med['defaults'][0] / max(med['tuned'][0], 1):.2f}x  (> 1: the tuning helps)"
    )


if __name__ == "__main__":
    main()
