"""Teacher-forced scoring (omniopd_verl.runtime.scoring) against a naive one-row-at-a-time float64 reference."""

from __future__ import annotations

import math

import pytest
import torch

from omniopd_verl.errors import ConfigError
from omniopd_verl.runtime.models import load_causal_lm
from omniopd_verl.runtime.scoring import render_prompt, score_responses


def _naive(model, prompt_ids, response_ids):
    """Unpadded full forward, float64 softmax, loops over positions: the independent reference."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    lps, hs = [], []
    for j, tok in enumerate(response_ids):
        row = logits[len(prompt_ids) + j - 1]
        p = torch.softmax(row, dim=-1)
        lps.append(math.log(p[tok].item()))
        hs.append(-(p * torch.log(p)).sum().item())
    return lps, hs


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return load_causal_lm(tiny_model_path)


def test_batched_scores_match_naive_reference(tiny):
    model, tok = tiny
    prompts = [
        "Q: what is 2+2?\nA:",
        [{"role": "user", "content": "Name a colour."}],
        "x",
    ]
    responses = [" It is 4, because two and two make four.", "Blue.", " a much longer response " * 6]
    # a tiny token budget forces several batches of mixed lengths
    for budget in (10_000, 40):
        scored = score_responses(model, tok, prompts, responses, max_batch_tokens=budget)
        for s, resp in zip(scored, responses, strict=True):
            assert tok.decode(s.response_ids) == resp
            lps, hs = _naive(model, s.prompt_ids, s.response_ids)
            assert s.logprobs_T.dtype == torch.float32 and s.logprobs_T.shape == (len(s.response_ids),)
            assert torch.allclose(s.logprobs_T.double(), torch.tensor(lps, dtype=torch.float64), atol=2e-4)
            assert torch.allclose(s.entropy_T.double(), torch.tensor(hs, dtype=torch.float64), atol=2e-4)


def test_chat_messages_use_the_generation_prompt(tiny):
    _, tok = tiny
    text = render_prompt(tok, [{"role": "user", "content": "hi"}])
    assert text == tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
    assert render_prompt(tok, "raw prompt") == "raw prompt"
    with pytest.raises(ConfigError, match="prompt=42"):
        render_prompt(tok, 42)


def test_empty_prompt_is_refused(tiny):
    model, tok = tiny
    with pytest.raises(ConfigError, match="prompt has no tokens"):
        score_responses(model, tok, [""], ["hello"])
