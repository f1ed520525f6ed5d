"""Grouped-query attention for one-token decode steps without copying the KV cache (CPU models).

transformers' `sdpa` attention uses SDPA's native GQA only without an attention mask; with one (every
left-padded batch has one) it first repeats each key/value head for its query heads (`repeat_kv`), a
fresh copy of the whole cache per layer per step: for SmolLM2-135M (9 query heads on 3 KV heads),
64 rows x 300 tokens, 2 x 44 MB per layer, x 30 layers, every decode step. For a single query token
the repeat is unnecessary: the g query heads that share a KV head can be laid out as g query
*positions* of that head, q [B, H, 1, D] -> [B, Hkv, g, D], and one SDPA call over the un-repeated
cache gives the same softmax per head (query head h reads KV head h // g, the order `repeat_kv`
uses; the [B, 1, 1, L] mask broadcasts over the g positions). Measured on SmolLM2-135M, 16 prefixes
x 4 samples x 300 tokens, 16 new tokens, one thread: decode 5.5 s vs 10-13 s with `sdpa`, the same
samples. Any other call (prefill, training, scoring: more than one query token) is the stock `sdpa`.

`use_for(model)` switches a loaded model whose attention is `sdpa` to it; models.load_causal_lm does
so on CPU. tests/test_decode_attention.py pins it against `sdpa` on a GQA model.
"""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "omniopd_sdpa"


def gqa_decode_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """`sdpa_attention_forward`'s signature and output ([B, q_len, H, D], None)."""
    groups = getattr(module, "num_key_value_groups", 1)
    if query.shape[2] != 1 or groups == 1 or kwargs.get("output_attentions", False) or dropout:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    B, H, _, D = query.shape
    q_BKgD = query.reshape(B, key.shape[1], groups, D)
    out_BKgD = torch.nn.functional.scaled_dot_product_attention(
        q_BKgD, key, value, attn_mask=attention_mask, scale=scaling
    )
    return out_BKgD.reshape(B, 1, H, D), None


def register() -> str:
    """Register the attention (and `sdpa`'s mask builder under the same name) with transformers; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, gqa_decode_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def use_for(model) -> bool:
    """Switch `model` from `sdpa` to this attention; False (and nothing changed) for any other attention."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    model.set_attn_implementation(register())
    return True
