"""Post-hoc (NOT the demo's pre-declared metric): how often each model's own continuations use the steered token set.

For a finished `make demo` folder (runs/demo): the initial student, the OmniOPD arm's and the control arm's
final checkpoints each sample 4 continuations of 16 tokens (same seeds) at the fixed held-out prefixes,
and the share of demonstration-teacher tokens (omniopd_verl/teachers/steering.py, 'arithmetic') is compared,
per prompt, with a bootstrap 95% CI. This asks the other question the demo's metric cannot answer alone:
did the student's own text take on the teacher's property?

Usage: python scripts/posthoc_token_share.py [runs/demo] [--tokens arithmetic]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="runs/demo")
    parser.add_argument("--tokens", default="arithmetic")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the initial student")
    args = parser.parse_args()

    from omniopd_verl.core.seeds import derive_seed
    from omniopd_verl.local import paired_eval as pe
    from omniopd_verl.runtime.generation import eos_token_ids, sample_continuations
    from omniopd_verl.runtime.models import load_causal_lm
    from omniopd_verl.teachers.steering import token_set

    root = Path(args.root)
    items = pe.load_items(root / "heldout_set.jsonl")
    shares: dict[str, list[float]] = {}
    for label in ("initial", "omniopd", "control"):
        path = args.model
        if label != "initial":  # the last checkpoint of each arm
            path = str(sorted((root / label / "checkpoints").glob("step_*"), key=lambda p: int(p.name[5:]))[-1])
        model, tok = load_causal_lm(path)
        wanted = set(token_set(tok, args.tokens))
        out = sample_continuations(
            model,
            [it.prefix_ids for it in items],
            n=4,
            max_new_tokens=16,
            temperature=1.0,
            top_p=1.0,
            seeds=[derive_seed(7, i) for i in range(len(items))],
            pad_token_id=tok.pad_token_id,
            eos_token_ids=eos_token_ids(model, tok),
            max_rows=64,
        )
        shares[label] = []
        for row in out:
            toks = [t for s in row for t in s.token_ids]
            shares[label].append(sum(t in wanted for t in toks) / max(1, len(toks)))
        print(f"{label:<8} {args.tokens} share of its own continuations: {sum(shares[label]) / len(items):.3f}")
        del model
    for a, b in (("omniopd", "control"), ("omniopd", "initial"), ("control", "initial")):
        r = pe.mean_ci(pe._by_prompt(items, [x - y for x, y in zip(shares[a], shares[b], strict=True)]))
        print(
            f"{a} - {b}: {r['effect']:+.4f} [{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}] (bootstrap over {r['prompts']} prompts)"
        )


if __name__ == "__main__":
    main()
