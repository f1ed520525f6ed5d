"""Local engine update step vs a bare torch forward+backward of the same model on the same batch (CPU).

Both sides run SmolLM2-135M-Instruct (float32) on one fixed batch of sampled-length sequences:
- bare:   logits of the response positions (same `logits_to_keep`), token cross-entropy, backward.
- engine: what `policy_update` does per micro-batch for the student: response logits, `omniopd_loss`
          (verl's vanilla policy loss + agg_loss, the exact-vocabulary KL to the reference on unaudited
          tokens), backward. The reference's forward (no grad) and the AdamW step are timed apart.
Repetitions alternate bare / engine so that the noise of a shared machine hits both alike; the
medians are compared. Prints throughput ratio bare_time / engine_time (target >= 0.8).

Usage: python benchmarks/bench_local_update.py [--model PATH|smollm2-135m-instruct] [--batch 4]
       [--prompt-len 96] [--response-len 128] [--reps 5] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from omniopd_verl.core import chunk_token_credit  # noqa: E402
from omniopd_verl.local.loss import collate, make_actor_config, omniopd_loss, reference_terms, response_logits  # noqa: E402


def make_batch(vocab: int, batch: int, prompt_len: int, response_len: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, vocab, (prompt_len - 3 * b,), generator=g).tolist() for b in range(batch)]
    responses = [torch.randint(0, vocab, (response_len - 5 * b,), generator=g).tolist() for b in range(batch)]
    return prompts, responses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=96)
    parser.add_argument("--response-len", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (smoke test, seconds)")
    args = parser.parse_args()

    from omniopd_verl.runtime.models import load_causal_lm, make_tiny_random_model

    model_name = args.model
    if args.tiny:
        import tempfile

        model_name = make_tiny_random_model(os.path.join(tempfile.gettempdir(), "omniopd-bench-tiny"))
    torch.manual_seed(0)
    model, tok = load_causal_lm(model_name)
    ref, _ = load_causal_lm(model_name)
    ref.requires_grad_(False)
    model.train()
    prompts, responses = make_batch(model.config.vocab_size, args.batch, args.prompt_len, args.response_len)
    batch = collate(prompts, responses, tok.pad_token_id)
    B, T = batch.response_ids_BT.shape
    # two chunks of 16 tokens per row, pi_hat 0.3 / 0.7: a realistic audit pattern
    starts = torch.tensor([[8, 64]] * B)
    credit = chunk_token_credit(starts, starts + 16, torch.tensor([[0.3, 0.7]] * B), batch.response_mask_BT)
    cfg = make_actor_config(
        policy_loss="vanilla", clip_ratio=0.2, loss_agg_mode="seq-mean-token-sum", micro_batch_size=B
    )
    n_tokens = int(batch.response_mask_BT.sum())
    with torch.no_grad():
        ref_terms = reference_terms(response_logits(ref, batch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: the weights stay fixed across reps

    def bare() -> None:
        logits = response_logits(model, batch)
        mask = batch.response_mask_BT
        ce = torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), batch.response_ids_BT.flatten(), reduction="none"
        ).view(B, T)
        ((ce * mask).sum() / mask.sum()).backward()
        model.zero_grad(set_to_none=True)

    def engine() -> None:
        logits = response_logits(model, batch)
        terms = omniopd_loss(
            logits,
            ref_terms,
            batch.response_ids_BT,
            credit.advantage_BT,
            batch.response_mask_BT,
            credit.unaudited_mask_BT,
            beta=0.1,
            actor_config=cfg,
            global_batch_size=B,
            batch_num_tokens=n_tokens,
        )
        terms.objective.backward()
        model.zero_grad(set_to_none=True)

    def reference() -> None:
        with torch.no_grad():
            reference_terms(response_logits(ref, batch))

    def adamw() -> None:
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        model.zero_grad(set_to_none=True)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    bare(), engine()  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {"bare": [], "engine": [], "reference": [], "adamw": []}
    for _ in range(args.reps):
        times["bare"].append(timed(bare))
        times["engine"].append(timed(engine))
        times["reference"].append(timed(reference))
        times["adamw"].append(timed(adamw))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"model {model_name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params, vocab "
        f"{model.config.vocab_size}), batch {B} x (prompt <= {batch.prompt_len} + response <= {T}), "
        f"{n_tokens} response tokens, torch threads {torch.get_num_threads()}, {args.reps} alternating reps"
    )
    print(f"{'stage':<34}{'median s':>10}{'min s':>10}")
    for label, key in (
        ("bare fwd+bwd (cross-entropy)", "bare"),
        ("engine fwd+bwd (verl loss + KL)", "engine"),
        ("engine reference fwd (no grad)", "reference"),
        ("engine AdamW step", "adamw"),
    ):
        print(f"{label:<34}{med[key]:>10.3f}{min(times[key]):>10.3f}")
    full = med["engine"] + med["reference"] + med["adamw"]
    print(f"throughput ratio engine fwd+bwd / bare fwd+bwd:      {med['bare'] / med['engine']:.2f}x (target >= 0.80)")
    print(f"throughput ratio whole update (+ref +AdamW) / bare:  {med['bare'] / full:.2f}x")
    mins = {k: min(v) for k, v in times.items()}
    print(
        f"same ratios from the fastest rep of each (least disturbed by neighbours): "
        f"{mins['bare'] / mins['engine']:.2f}x and {mins['bare'] / (mins['engine'] + mins['reference'] + mins['adamw']):.2f}x"
    )
    print("note: timings on a shared CPU are noisy; both sides alternate within one process, so the ratio holds")


if __name__ == "__main__":
    main()
