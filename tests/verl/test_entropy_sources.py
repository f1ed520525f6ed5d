"""How far the verl entropy source (`rollout_topk`) moves the anchors away from `exact`, measured.

Real SmolLM2-135M-Instruct on GSM8K prompts: sample responses, then compute both entropies from the
same logits (exact over the vocabulary; top-k lower bound with k = 20, what the omniopd_agent loop gets
from the rollout server) and the peak-entropy anchors of each. Prints the numbers (run with -s):
    .venv/bin/pytest -q -s -m slow tests/verl/test_entropy_sources.py
Asserts the bracket lower <= exact <= upper everywhere and that the k = 20 estimate is close enough to
matter (most audited tokens shared); the exact figures go in the report, not in the assertions.
"""

from __future__ import annotations

import json

import pytest
import torch

from omniopd_verl.core import exact_entropy, peak_entropy_anchors, topk_entropy

K, M, C, PROMPTS, MAX_NEW = 20, 4, 8, 6, 96


@pytest.mark.slow
def test_rollout_topk_vs_exact_anchor_agreement(smollm2_path, gsm8k_subset):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    rows = [json.loads(line) for line in (gsm8k_subset / "test.jsonl").open()][:PROMPTS]
    torch.manual_seed(0)
    shared, total, same_anchor, n_anchor, gaps = 0, 0, 0, 0, []
    for row in rows:
        prompt = tok.apply_chat_template([{"role": "user", "content": row["question"]}], add_generation_prompt=True)
        prompt_ids = prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt
        ids = torch.tensor([list(prompt_ids)])
        with torch.no_grad():
            out = model.generate(ids, do_sample=True, temperature=1.0, max_new_tokens=MAX_NEW, top_k=0)
            P = ids.shape[1]
            T = out.shape[1] - P
            logits_TV = model(out).logits[0, P - 1 : P - 1 + T].float()
        exact_T = exact_entropy(logits_TV)
        est = topk_entropy(torch.log_softmax(logits_TV, -1).topk(K, dim=-1).values, vocab_size=logits_TV.shape[-1])
        assert torch.all(est.lower <= exact_T + 1e-3) and torch.all(exact_T <= est.upper + 1e-3)
        gaps.append((exact_T - est.estimate).abs().mean().item())
        a_exact = peak_entropy_anchors(exact_T, T, M, C)
        a_topk = peak_entropy_anchors(est.estimate, T, M, C)
        tokens_exact = {t for a in a_exact for t in range(a, a + C)}
        tokens_topk = {t for a in a_topk for t in range(a, a + C)}
        shared += len(tokens_exact & tokens_topk)
        total += len(tokens_exact | tokens_topk)
        same_anchor += len(set(a_exact) & set(a_topk))
        n_anchor += len(a_exact)
    jaccard = shared / total
    print(
        f"\nrollout_topk (k={K}) vs exact, SmolLM2-135M-Instruct, {PROMPTS} GSM8K prompts, {MAX_NEW} new tokens, "
        f"M={M} C={C}: audited-token Jaccard {jaccard:.3f}, identical anchors {same_anchor}/{n_anchor}, "
        f"mean |H_exact - H_topk| {sum(gaps) / len(gaps):.4f} nats"
    )
    assert jaccard >= 0.5
