"""omniopd_verl/runtime/decode_attention.py pinned against transformers' own `sdpa` on a grouped-query model.

A tiny float64 Llama with 4 query heads on 2 KV heads (SmolLM2's layout, smaller), a left-padded batch:
every decode step's logits must equal those of stock `sdpa` (which repeats the KV heads), and the
sampling loop must return the same samples under both.
"""

from __future__ import annotations

import pytest
import torch

from omniopd_verl.runtime import decode_attention
from omniopd_verl.runtime.generation import sample_continuations
from omniopd_verl.runtime.models import load_causal_lm, make_tiny_random_model


@pytest.fixture(scope="module")
def gqa_model(tmp_path_factory, smollm2_path):
    path = make_tiny_random_model(tmp_path_factory.mktemp("tiny-gqa"), num_heads=4, num_key_value_heads=2)
    model, tok = load_causal_lm(path, dtype=torch.float64)
    return model, tok


def decode_logits(model, rows, steps=4):
    """Prefill a left-padded batch, then feed `steps` fixed tokens one at a time; every step's logits."""
    from transformers import DynamicCache

    P = max(map(len, rows))
    ids = torch.tensor([[0] * (P - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        logits = [out.logits[:, -1]]
        for t in range(steps):
            mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype)], dim=1)
            positions = positions[:, -1:] + 1
            feed = torch.full((len(rows), 1), 100 + t)
            out = model(
                input_ids=feed, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
            )
            logits.append(out.logits[:, -1])
    return torch.stack(logits)


def test_cpu_loads_use_it_and_decode_equals_stock_sdpa(gqa_model):
    model, tok = gqa_model
    assert model.config._attn_implementation == decode_attention.NAME
    assert model.config.num_attention_heads == 2 * model.config.num_key_value_heads
    rows = [tok(t)["input_ids"] for t in ("Hello there, how are you today", "Q: 2+2?", "abc")]
    ours = decode_logits(model, rows)
    model.set_attn_implementation("sdpa")
    try:
        stock = decode_logits(model, rows)
    finally:
        model.set_attn_implementation(decode_attention.NAME)
    assert ours.shape == stock.shape == (5, 3, model.config.vocab_size)
    torch.testing.assert_close(ours, stock, rtol=0, atol=1e-10)


def test_sampling_loop_gives_the_same_samples_as_stock_sdpa(gqa_model):
    model, tok = gqa_model
    prefixes = [tok(t)["input_ids"] for t in ("Hello there, how are you", "Q: 2+2?", "abc")]
    kw = dict(n=3, max_new_tokens=10, temperature=1.0, top_p=0.9, seeds=[1, 2, 3], pad_token_id=0)
    ours = sample_continuations(model, prefixes, **kw)
    model.set_attn_implementation("sdpa")
    try:
        stock = sample_continuations(model, prefixes, **kw)
    finally:
        model.set_attn_implementation(decode_attention.NAME)
    assert ours == stock
    assert len({tuple(s.token_ids) for s in ours[0]}) > 1


def test_use_for_leaves_a_non_sdpa_model_alone(gqa_model):
    model, _ = gqa_model
    model.set_attn_implementation("eager")
    try:
        assert decode_attention.use_for(model) is False
        assert model.config._attn_implementation == "eager"
    finally:
        model.set_attn_implementation(decode_attention.NAME)
