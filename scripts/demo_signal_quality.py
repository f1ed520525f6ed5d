"""How much teacher signal does one demo step carry? corr(centred pi_hat, the chunk's arithmetic share), no training.

The demo's teacher differs from the student by favouring arithmetic tokens, so a chunk's advantage is
useful to the extent that it tracks the chunk's share of those tokens. This script rolls out the initial
student on a fixed set of training prompts (4 batches x 8 prompts x 2 responses, fixed seeds), audits every
response with the recipe's setting plus the overrides given, centres pi_hat within each batch (the demo's
`centered_batch` advantage) and prints the Pearson correlation with the arithmetic-token share of each
audited student chunk, the advantage's spread and the number of chunks. Used to choose the demo's setting
(issue 19): it measures the signal per sample in minutes, where a training run measures it per realisation.
Every setting sees the same rollouts (same weights, prompts and seeds), so settings compare on the same chunks.

Usage: python scripts/demo_signal_quality.py [key=value ...]   e.g. omniopd.teacher.options.steer.bias=4.0
"""

from __future__ import annotations

import json
import math
import sys
import tempfile

from omniopd_verl.local.config import load_run_config
from omniopd_verl.local.train import LocalTrainer
from omniopd_verl.package_files import QUICKSTART_RECIPE, package_file
from omniopd_verl.teachers.steering import token_set


def pearson(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    norm = math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))
    return cov / norm if norm > 0 else float("nan")  # a constant share or advantage carries no signal


def main(overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as out:
        run = load_run_config(
            str(package_file(QUICKSTART_RECIPE)),
            ["local.progress=false", "local.tensorboard=false", f"local.output_dir={out}", *overrides],
        )
        trainer = LocalTrainer(run)
        arithmetic = set(token_set(trainer.tokenizer, "arithmetic"))
        shares, advantages = [], []
        try:
            for batch in range(4):
                problems = trainer.train_problems[100 + 8 * batch : 108 + 8 * batch]
                rollouts = trainer.rollout(problems, seed=1000 + batch, uid_prefix=f"q{batch}-", responses_per_prompt=2)
                pi_hat = []
                for rollout, audit in zip(rollouts, trainer.audit(rollouts), strict=True):
                    for chunk in audit.chunks:
                        tokens = rollout.response_ids[chunk.start : chunk.end]
                        shares.append(sum(t in arithmetic for t in tokens) / len(tokens))
                        pi_hat.append(chunk.pi_hat)
                mean = sum(pi_hat) / len(pi_hat)
                advantages += [p - mean for p in pi_hat]
        finally:
            trainer.close()
    spread = math.sqrt(sum(a * a for a in advantages) / len(advantages))
    print(
        json.dumps(
            {"overrides": overrides, "chunks": len(shares), "corr": pearson(shares, advantages), "adv_sd": spread}
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
