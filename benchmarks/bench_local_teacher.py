"""The local teacher's sampling: one prefill per prefix (shared KV cache) vs one prefill per sample row.

At the demo's sizes (SmolLM2-135M-Instruct, 16 prefixes x N=4 samples, ~300-token prefixes cut from
GSM8K question + reference solution, 16 new tokens) it times `omniopd_verl.runtime.generation.sample_continuations`
with share_prefix=True (the new path) and share_prefix=False (the old one-row-per-sample path), checks
that both return the same samples, and prints the ratio (target >= 2.5x). It also times the prefill
alone for the distinct prefixes and for all rows: the old path cannot beat (prefill of all rows), the
new one cannot beat (prefill of the distinct prefixes) + the decode, which bounds the ratio
available from prefill sharing.

Usage: python benchmarks/bench_local_teacher.py [--prefixes 16] [--n 4] [--prefix-tokens 300] [--new-tokens 16]
On a shared CPU wall times depend on the neighbours: both paths run in the same process, interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GSM8K = Path(os.environ.get("OMNIOPD_BENCHMARKS", Path(__file__).resolve().parents[2] / "shared/data/benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prefixes", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--prefix-tokens", type=int, default=300)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()

    import torch

    from omniopd_verl.runtime.cpu_allocator import tune_malloc_for_cpu_inference
    from omniopd_verl.runtime.generation import eos_token_ids, sample_continuations
    from omniopd_verl.runtime.models import load_causal_lm

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model, tok = load_causal_lm(args.model)
    rows = [json.loads(line) for line in (GSM8K / "gsm8k" / "train.jsonl").open()][: args.prefixes * 3]
    prefixes = []
    for r in rows:
        ids = tok(r["question"] + "\n" + r["answer"] + "\n" + r["question"])["input_ids"][: args.prefix_tokens]
        if len(ids) >= args.prefix_tokens * 0.8:
            prefixes.append(ids)
        if len(prefixes) == args.prefixes:
            break
    kw = dict(
        n=args.n,
        max_new_tokens=args.new_tokens,
        temperature=1.0,
        top_p=1.0,
        seeds=list(range(len(prefixes))),
        pad_token_id=tok.pad_token_id,
        eos_token_ids=eos_token_ids(model, tok),
    )

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    def prefill(batch):
        width = max(len(p) for p in batch)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in batch])
        mask = (torch.arange(width) >= torch.tensor([width - len(p) for p in batch]).unsqueeze(1)).long()
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)

    new_t, old_t, pre_rows, pre_unique = [], [], [], []
    for _ in range(args.reps):
        t, new = timed(lambda: sample_continuations(model, prefixes, **kw))
        new_t.append(t)
        t, old = timed(lambda: sample_continuations(model, prefixes, share_prefix=False, **kw))
        old_t.append(t)
        pre_unique.append(timed(lambda: prefill(prefixes))[0])
        pre_rows.append(timed(lambda: prefill([p for p in prefixes for _ in range(args.n)]))[0])
    same = sum(a == b for a, b in zip(new, old, strict=True))
    old_s, new_s, pr, pu = min(old_t), min(new_t), min(pre_rows), min(pre_unique)
    decode = max(new_s - pu, 0.0)
    print(
        f"{len(prefixes)} prefixes x n={args.n}, {sum(map(len, prefixes)) / len(prefixes):.0f} prefix tokens, "
        f"{args.new_tokens} new tokens, {args.model}, best of {args.reps}, "
        f"malloc tuning {'on' if tune_malloc_for_cpu_inference() else 'off'} (omniopd_verl/runtime/cpu_allocator.py)"
    )
    print(f"one prefill per sample row (old): {old_s:8.1f} s")
    print(f"one prefill per prefix (new):     {new_s:8.1f} s   ratio old/new {old_s / new_s:.2f}x (target >= 2.5x)")
    print(f"prefill only: all {len(prefixes) * args.n} rows {pr:.1f} s, {len(prefixes)} distinct prefixes {pu:.1f} s")
    print(
        f"bound from prefill sharing: (prefill rows + decode) / (prefill prefixes + decode) = "
        f"{(pr + decode) / (pu + decode):.2f}x (decode {decode:.1f} s)"
    )
    print(
        f"identical samples on both paths: {same}/{len(prefixes)} prefixes (float32; a differing last bit may flip a draw)"
    )


if __name__ == "__main__":
    main()
