"""How close are verl's KL anchors to the spec's? Top-k reference KL and k3 vs the exact KL, offline.

    python benchmarks/bench_kl_anchor.py [--model smollm2-135m-instruct] [--prompts 6] [--tokens 64] [--noise 0.02]

ALGORITHM.md step 7 wants the exact KL(pi_ref || pi_theta) over the vocabulary on the unaudited tokens.
verl 0.9.1 offers two approximations:
- `low_var_kl` (k3, the shipped default): exp(r) - r - 1 with r = log pi_ref(y) - log pi_theta(y) at the
  sampled token y ~ pi_theta, one sample per position (it estimates the reverse KL(pi_theta || pi_ref));
- `topk_ref`: verl's distillation loss `forward_kl_topk` with the reference model as the "teacher":
  sum over the reference's top-k tokens of p_ref (log p_ref - log p_theta), no tail term.
On one CPU batch this computes, per unaudited response position, the exact KL from full logits and
both approximations (k = 20, 64, 256), and prints their means, the ratio to the exact value and the
per-token correlation. The student is the reference with Gaussian noise of relative size `--noise` on
every weight (a stand-in for a trained policy that drifted); responses are sampled from the student;
audited positions are M=2 peak-entropy chunks of C=8 tokens per response (as the audit would pick).

A measurement, not a test: the numbers depend on the model, the drift and the prompts.
"""

from __future__ import annotations

import argparse
import json
import math

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--noise", type=float, default=0.02, help="relative std of the weight perturbation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)

    from omniopd_verl.data import benchmarks
    from omniopd_verl.runtime.models import load_causal_lm

    ref, tokenizer = load_causal_lm(args.model)
    student, _ = load_causal_lm(args.model)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * p.float().std() * args.noise)
    problems = benchmarks.load("gsm8k")[: args.prompts]

    ks = (20, 64, 256)
    exact, k3 = [], []
    topk = {k: [] for k in ks}
    for problem in problems:
        messages = [{"role": "user", "content": problem.question}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
        with torch.no_grad():
            out = student.generate(prompt, max_new_tokens=args.tokens, do_sample=True, temperature=1.0, top_k=0)
            P = prompt.shape[1]
            ids = out[:, : P + args.tokens]
            T = ids.shape[1] - P
            lp_theta = torch.log_softmax(student(ids).logits[0, P - 1 : P - 1 + T].double(), -1)
            lp_ref = torch.log_softmax(ref(ids).logits[0, P - 1 : P - 1 + T].double(), -1)
        p_ref = lp_ref.exp()
        kl_exact_T = (p_ref * (lp_ref - lp_theta)).sum(-1)
        entropy_T = -(lp_theta.exp() * lp_theta).sum(-1)
        audited = torch.zeros(T, dtype=torch.bool)
        for t in torch.argsort(entropy_T, descending=True).tolist():  # M=2 non-overlapping C=8 chunks
            if audited.sum() >= 16:
                break
            if t + 8 <= T and not audited[t : t + 8].any():
                audited[t : t + 8] = True
        keep = ~audited
        y = ids[0, P:]
        r_T = lp_ref.gather(-1, y[:, None])[:, 0] - lp_theta.gather(-1, y[:, None])[:, 0]
        k3_T = (r_T.exp() - r_T - 1).clamp(-10, 10)
        exact.append(kl_exact_T[keep])
        k3.append(k3_T[keep])
        for k in ks:
            v, i = lp_ref.topk(k, -1)
            topk[k].append((v.exp() * (v - lp_theta.gather(-1, i))).sum(-1)[keep])

    exact_N = torch.cat(exact)
    rows = {"k3 (low_var_kl, sampled)": torch.cat(k3)} | {f"topk_ref k={k}": torch.cat(topk[k]) for k in ks}
    e = float(exact_N.mean())
    print(
        f"{len(problems)} GSM8K prompts, {exact_N.numel()} unaudited response tokens, model {args.model}, noise {args.noise}"
    )
    print(f"exact KL(pi_ref || pi_theta) mean {e:.5f} nat/token")
    results = {"exact": e}
    for name, vals in rows.items():
        m = float(vals.mean())
        corr = float(torch.corrcoef(torch.stack([vals, exact_N]))[0, 1])
        print(f"{name:28s} mean {m:.5f}  ratio to exact {m / e:6.3f}  per-token corr {corr:6.3f}")
        results[name] = {"mean": m, "ratio": m / e, "corr": corr}
    print(json.dumps(results))
    return 0 if math.isfinite(e) else 1


if __name__ == "__main__":
    raise SystemExit(main())
