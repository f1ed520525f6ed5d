"""The demo's two kinds of worker process: `prepare` (the held-out set) and `train` (one arm).

`python -m omniopd_verl.demo` (quickstart.py) runs each phase in a fresh process so that the two arms can
train side by side: a demo process uses about one core at any thread count (decode and the small update
are latency-bound), so two one-thread processes do twice the work of one two-thread process on a 2-core
machine, and each process's memory is one arm's (~6 GB), not one arm's plus the heap the previous arm
left behind.

  prepare  builds the fixed held-out set from the initial student and measures it:
           <out>/heldout_set.jsonl and <out>/initial.json (the initial student's measures, the teacher's
           own mass, the token shares)
  train    trains one arm (the config's local.output_dir) and measures it on that held-out set
           (LocalTrainer.fit writes eval.json and summary.json there)

Usage (the demo calls these; they are not a user command):
  python -m omniopd_verl.demo.phases --out DIR prepare [key=value ...]
  python -m omniopd_verl.demo.phases --out DIR train [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omniopd_verl.package_files import QUICKSTART_RECIPE, package_file

RECIPE = package_file(QUICKSTART_RECIPE)


def prepare(overrides: list[str], out: Path) -> int:
    from omniopd_verl.local import paired_eval as pe
    from omniopd_verl.local.config import load_run_config
    from omniopd_verl.local.train import LocalTrainer

    cfg = load_run_config(str(RECIPE), overrides)
    trainer = LocalTrainer(cfg)
    try:
        if not trainer.heldout_problems:
            print("local.data.heldout_prompts is 0: nothing to measure", file=sys.stderr)
            return 2
        steering = trainer.heldout.steering
        if steering is None:
            print(
                "omniopd.teacher.options.steer is null: the demo's metric is the demonstration teacher's token set "
                "(omniopd_verl/teachers/steering.py); allowed a mapping {tokens: arithmetic, bias: <number>}",
                file=sys.stderr,
            )
            return 2
        items, before = trainer.heldout.prepare(trainer.heldout_problems)
        initial = {
            "before": before,
            "teacher_mass": pe.mean_over_prompts(items, trainer.heldout.teacher_mass(items)),
            "token_share": pe.token_share_summary(items, steering.token_ids),
            "steer": dict(steering.option),
            "steer_tokens": steering.tokens,
        }
    finally:
        trainer.close()
    pe.save_items(items, out / "heldout_set.jsonl")
    (out / "initial.json").write_text(json.dumps(initial))
    return 0


def train(overrides: list[str], out: Path) -> int:
    from omniopd_verl.local import paired_eval as pe
    from omniopd_verl.local.config import load_run_config
    from omniopd_verl.local.train import LocalTrainer

    cfg = load_run_config(str(RECIPE), overrides)
    items = pe.load_items(out / "heldout_set.jsonl")
    before = json.loads((out / "initial.json").read_text())["before"]
    trainer = LocalTrainer(cfg)
    try:
        trainer.fit(heldout=(items, before))
    finally:
        trainer.close()
    return 0


PHASES = {"prepare": prepare, "train": train}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omniopd_verl.demo.phases", description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=sorted(PHASES))
    parser.add_argument("--out", required=True, help="the demo's output folder (heldout_set.jsonl, initial.json)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    return PHASES[args.phase](args.overrides, Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
