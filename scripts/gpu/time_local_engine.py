"""Time the local engine's rollout and update at a realistic shape on one GPU, in one call; print a table.

Shape (default): a Qwen3-1.7B config with random weights in bf16 (28 layers, hidden 2048, vocab
151,936), 16 prompts of 256 tokens, responses of exactly 1,024 sampled tokens (EOS suppressed so every
row has the full length), update micro-batches of 4. Random weights are fine for timing: the work per
token does not depend on the values. Everything timed is the engine's own code:
  rollout/generate   rollout.sample_token_ids (transformers generate, sampling, KV cache)
  rollout/score      student.score_token_ids (exact entropies and log-probs from the logits)
  reference          the frozen copy's forward + loss.reference_terms
  update fwd+bwd     response logits + loss.omniopd_loss (verl policy loss + exact KL) + backward
  AdamW              clip + optimizer step
plus a bare forward+backward (cross-entropy on the same logits) of the same model and batch, for the
ratio. The audit (teacher + similarity) is not timed here: its cost is the teacher's, not the engine's.

Usage (one call on a GPU machine, ~3-5 minutes on an H100):
    python scripts/gpu/time_local_engine.py
    python scripts/gpu/time_local_engine.py --tiny     # CPU smoke test at a tiny shape (seconds)
Prints the device name; torch.cuda.synchronize() brackets every timed region.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

QWEN3_1_7B = dict(
    vocab_size=151936,
    hidden_size=2048,
    intermediate_size=6144,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
TINY = dict(
    vocab_size=4096,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)


def build(config_kwargs: dict, dtype: torch.dtype, device: str, seed: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(**config_kwargs, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(dtype)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny Qwen3 on CPU, float32: proves the script runs")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--response-len", type=int, default=1024)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3, help="update repetitions (median reported)")
    args = parser.parse_args()
    if args.tiny:
        args.prompts, args.prompt_len, args.response_len, args.micro_batch, args.reps = 4, 16, 24, 2, 2

    from omniopd_verl.core import chunk_token_credit
    from omniopd_verl.local.loss import collate, make_actor_config, omniopd_loss, reference_terms, response_logits
    from omniopd_verl.local.rollout import sample_token_ids
    from omniopd_verl.local.update import Timer, policy_update
    from omniopd_verl.runtime.scoring import score_token_ids

    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny for the CPU smoke test")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    shape = TINY if args.tiny else QWEN3_1_7B
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - t0, out

    t_build, model = timed(lambda: build(shape, dtype, device, 0))
    ref = build(shape, dtype, device, 0).requires_grad_(False).eval()
    n_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    V = shape["vocab_size"]
    prompts = [torch.randint(3, V, (args.prompt_len,), generator=g).tolist() for _ in range(args.prompts)]

    # rollout: sampling with EOS suppressed (min_new_tokens) so every response has the full length
    t_gen, (responses, _) = timed(
        lambda: sample_token_ids(
            model,
            prompts,
            max_new_tokens=args.response_len,
            min_new_tokens=args.response_len,
            temperature=1.0,
            top_p=1.0,
            seed=1,
            pad_token_id=2,
            eos_token_ids=[1],
        )
    )
    t_score, _ = timed(
        lambda: score_token_ids(
            model,
            prompts,
            responses,
            pad_token_id=2,
            max_batch_tokens=args.micro_batch * (args.prompt_len + args.response_len),
        )
    )
    n_resp_tokens = sum(len(r) for r in responses)

    batch = collate(prompts, responses, 2)
    B, T = batch.response_ids_BT.shape
    C = max(1, T // 16)
    starts = torch.tensor([[T // 8, T // 2]] * B)
    credit = chunk_token_credit(starts, starts + C, torch.tensor([[0.3, 0.7]] * B), batch.response_mask_BT)
    actor_cfg = make_actor_config(
        policy_loss="vanilla", clip_ratio=0.2, loss_agg_mode="seq-mean-token-sum", micro_batch_size=args.micro_batch
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    model.train()

    def update():
        timer = Timer()
        policy_update(
            model,
            ref,
            optimizer,
            actor_cfg,
            prompts,
            responses,
            credit,
            beta=0.1,
            micro_batch_size=args.micro_batch,
            grad_clip=1.0,
            pad_token_id=2,
            timer=timer,
        )
        sync()
        return timer.seconds

    def bare():
        for lo in range(0, B, args.micro_batch):
            micro = collate(prompts[lo : lo + args.micro_batch], responses[lo : lo + args.micro_batch], 2).to(device)
            logits = response_logits(model, micro)
            m = micro.response_mask_BT
            ce = torch.nn.functional.cross_entropy(
                logits.float().flatten(0, 1), micro.response_ids_BT.flatten(), reduction="none"
            ).view(m.shape)
            ((ce * m).sum() / m.sum()).backward()
        model.zero_grad(set_to_none=True)

    update(), bare()  # warm-up
    upd_totals, upd_parts, bare_t = [], [], []
    for _ in range(args.reps):
        t, parts = timed(update)
        upd_totals.append(t)
        upd_parts.append(parts)
        bare_t.append(timed(bare)[0])
    med = statistics.median
    ref_s = med([p.get("reference", 0.0) for p in upd_parts])
    upd_s = med([p.get("update", 0.0) for p in upd_parts])
    bare_s = med(bare_t)
    # the "update" stage includes clip + AdamW; time AdamW alone for the breakdown
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    t_adam, _ = timed(lambda: (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0), optimizer.step()))
    model.zero_grad(set_to_none=True)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    _ = (omniopd_loss, reference_terms)  # the engine functions policy_update calls (imported for the record)

    print(
        f"device: {name}; model: Qwen3 config {'tiny' if args.tiny else '1.7B'} ({n_params / 1e9:.2f} B params, "
        f"{dtype}), random weights (built in {t_build:.1f} s)"
    )
    print(
        f"batch: {B} prompts x {args.prompt_len} tokens, responses {T} tokens ({n_resp_tokens} total), "
        f"micro-batch {args.micro_batch}, {args.reps} reps (median)"
    )
    print(f"{'stage':<40}{'seconds':>10}{'resp tok/s':>14}")
    rows = [
        ("rollout: generate (sampling)", t_gen),
        ("rollout: score (exact entropy, logp)", t_score),
        ("update: reference fwd + p_ref", ref_s),
        ("update: fwd+bwd (verl loss + KL) + AdamW", upd_s),
        ("  of which clip + AdamW step", t_adam),
        ("bare fwd+bwd (cross-entropy)", bare_s),
    ]
    for label, sec in rows:
        print(f"{label:<40}{sec:>10.3f}{n_resp_tokens / sec:>14.0f}")
    print(f"ratio bare fwd+bwd / engine fwd+bwd (excl. AdamW): {bare_s / max(upd_s - t_adam, 1e-9):.2f}x")
    print(f"ratio bare fwd+bwd / whole update (ref + fwd+bwd + AdamW): {bare_s / (ref_s + upd_s):.2f}x")
    print(f"peak GPU memory: {mem:.1f} GiB")


if __name__ == "__main__":
    main()
