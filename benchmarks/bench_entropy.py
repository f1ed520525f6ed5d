"""Exact entropy: chunked `exact_entropy` vs the one-shot `-(softmax * log_softmax).sum()` baseline.

Measures wall time and peak extra memory (tracemalloc can't see torch, so we read the allocator's
RSS growth in a fresh subprocess per variant) at a SmolLM2-sized vocabulary. Prints ratios against
the baseline measured in the same run. Not a test: run by hand or with `make bench`.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

SHAPE = (4, 1024, 49152)  # batch, tokens, vocab (SmolLM2)

CHILD = """
import json, resource, sys, time, torch
from omniopd_verl.core import exact_entropy
torch.manual_seed(0)
B, T, V = {shape}
logits = torch.randn(B, T, V, dtype=torch.bfloat16)
torch.set_num_threads(2)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
for _ in range(2):
    if "{variant}" == "baseline":
        x = logits.float()
        h = -(torch.softmax(x, -1) * torch.log_softmax(x, -1)).sum(-1)
        del x
    else:
        h = exact_entropy(logits)
dt = (time.perf_counter() - t0) / 2
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": dt, "peak_extra_mb": (peak - base) / 1024, "mean": float(h.mean())}}))
"""


def run(variant: str) -> dict:
    code = CHILD.format(shape=SHAPE, variant=variant)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    base = run("baseline")
    ours = run("chunked")
    assert abs(base["mean"] - ours["mean"]) < 1e-3, (base, ours)
    print(f"exact entropy, logits {SHAPE} bf16, 2 threads")
    print(f"{'variant':10s} {'seconds':>8s} {'peak extra MB':>14s}")
    print(f"{'baseline':10s} {base['seconds']:8.3f} {base['peak_extra_mb']:14.0f}")
    print(f"{'chunked':10s} {ours['seconds']:8.3f} {ours['peak_extra_mb']:14.0f}")
    print(
        f"speed ratio (baseline / chunked): {base['seconds'] / ours['seconds']:.2f}x; "
        f"memory ratio (chunked / baseline): {ours['peak_extra_mb'] / max(base['peak_extra_mb'], 1):.2f}"
    )


if __name__ == "__main__":
    _ = resource  # the children measure; keep the import visible for readers
    main()
