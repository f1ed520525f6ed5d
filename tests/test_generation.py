"""The one sampling loop (omniopd_verl.runtime.generation): shared-prefix n-sampling against independent references.

A tiny random Llama in float64, so that batch-shape rounding cannot flip a draw: the shared-prefix path,
the one-row-per-sample path and a cache-free recompute must give the very same tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omniopd_verl.core.seeds import derive_seed
from omniopd_verl.runtime.generation import sample_continuations
from omniopd_verl.runtime.models import load_causal_lm, make_tiny_random_model


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory):
    path = make_tiny_random_model(tmp_path_factory.mktemp("tiny-gen"))
    model, tok = load_causal_lm(path, dtype=torch.float64)
    return model, tok


def prefixes(tok):
    return [tok(t)["input_ids"] for t in ("Hello there, how are you", "Q: 2+2?", "abc", "Hello there")]


def kw(tok, **over):
    base = dict(
        n=[3, 2, 4, 2],
        max_new_tokens=[8, 5, 12, 7],
        temperature=1.0,
        top_p=1.0,
        seeds=[11, 12, 13, 14],
        pad_token_id=tok.pad_token_id,
        eos_token_ids=[tok.eos_token_id],
    )
    base.update(over)
    return base


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_shared_prefix_equals_one_row_per_sample(tiny64, top_p):
    model, tok = tiny64
    shared = sample_continuations(model, prefixes(tok), **kw(tok, top_p=top_p))
    per_row = sample_continuations(model, prefixes(tok), share_prefix=False, **kw(tok, top_p=top_p))
    assert shared == per_row
    assert [[len(s.token_ids) for s in r] for r in shared] == [[8] * 3, [5] * 2, [12] * 4, [7] * 2]
    assert len({tuple(s.token_ids) for s in shared[2]}) > 1  # the n samples of one prefix differ


def naive_sample(model, prefix, n, steps, seed):
    """Cache-free reference: full recompute of every row at every step, inverse CDF with the same uniforms.

    The CDF is float32 as in the loop: the tiny random model is near-uniform over 49k tokens, where a
    float64 CDF moves a draw by a few token ids."""
    g = torch.Generator().manual_seed(seed)
    rows = [list(prefix) for _ in range(n)]
    for _ in range(steps):
        u = torch.rand(n, generator=g).numpy()
        for r in range(n):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([rows[r]])).logits[0, -1].float()
            cdf = torch.softmax(logits, dim=-1).cumsum(-1).numpy()
            rows[r].append(int(np.searchsorted(cdf, np.float32(u[r]) * cdf[-1])))
    return [row[len(prefix) :] for row in rows]


def test_kv_cache_loop_equals_cache_free_recompute(tiny64):
    model, tok = tiny64
    ps = prefixes(tok)[:2]
    out = sample_continuations(model, ps, **kw(tok, n=[2, 3], max_new_tokens=6, seeds=[5, 6], eos_token_ids=[]))
    for prefix, seed, row in zip(ps, [5, 6], out, strict=True):
        assert [s.token_ids for s in row] == naive_sample(model, prefix, len(row), 6, seed)
        assert not any(s.finished for s in row)


def test_a_request_depends_only_on_its_own_prefix_and_seed(tiny64):
    """No cross-request cache writes or RNG sharing: alone, reordered or beside others, the same samples."""
    model, tok = tiny64
    ps = prefixes(tok)
    together = sample_continuations(model, ps, **kw(tok))
    for i in range(len(ps)):
        alone = sample_continuations(
            model, [ps[i]], **kw(tok, n=kw(tok)["n"][i], max_new_tokens=kw(tok)["max_new_tokens"][i], seeds=11 + i)
        )
        assert alone[0] == together[i]
    order = [3, 1, 0, 2]
    base = kw(tok)
    shuffled = sample_continuations(
        model,
        [ps[i] for i in order],
        **kw(tok, **{k: [base[k][i] for i in order] for k in ("n", "max_new_tokens", "seeds")}),
    )
    assert [shuffled[order.index(i)] for i in range(len(ps))] == together
    # the same prefix twice in one batch with two seeds: two different sample sets, each its solo result
    twin = sample_continuations(model, [ps[0], ps[0]], **kw(tok, n=3, max_new_tokens=8, seeds=[11, 99]))
    assert twin[0] == together[0] and twin[1] != twin[0]
    torch.manual_seed(123)  # the global RNG plays no part
    assert sample_continuations(model, ps, **kw(tok)) == together


def test_max_rows_groups_requests_without_changing_samples(tiny64):
    model, tok = tiny64
    assert sample_continuations(model, prefixes(tok), max_rows=4, **kw(tok)) == sample_continuations(
        model, prefixes(tok), **kw(tok)
    )


def test_eos_min_new_tokens_bias_and_greedy(tiny64):
    model, tok = tiny64
    V = model.config.vocab_size
    eos = tok.eos_token_id
    to_eos = torch.zeros(V, dtype=torch.float64)
    to_eos[eos] = 100.0
    ps = prefixes(tok)[:2]
    stop = sample_continuations(model, ps, logit_bias_V=to_eos, **kw(tok, n=2, max_new_tokens=6, seeds=[1, 2]))
    assert all(s.token_ids == [eos] and s.finished for row in stop for s in row)
    late = sample_continuations(
        model, ps, logit_bias_V=to_eos, min_new_tokens=3, **kw(tok, n=2, max_new_tokens=6, seeds=[1, 2])
    )
    assert all(len(s.token_ids) == 4 and s.token_ids[-1] == eos and eos not in s.token_ids[:3] for r in late for s in r)
    greedy = sample_continuations(model, ps, **kw(tok, n=1, max_new_tokens=5, temperature=0.0, seeds=[1, 2]))
    for prefix, row in zip(ps, greedy, strict=True):
        with torch.no_grad():
            ref = model.generate(
                input_ids=torch.tensor([prefix]), max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id
            )
        assert row[0].token_ids == ref[0, len(prefix) :].tolist()[: len(row[0].token_ids)]


def test_bad_input_is_refused(tiny64):
    model, tok = tiny64
    with pytest.raises(ValueError, match="prefix 1 has no tokens"):
        sample_continuations(model, [[1, 2], []], **kw(tok, n=1, max_new_tokens=2, seeds=0))
    with pytest.raises(ValueError, match="n: 2 values for 3 prefixes"):
        sample_continuations(model, [[1], [2], [3]], **kw(tok, n=[1, 1], max_new_tokens=2, seeds=0))


def test_derive_seed_is_stable_and_spreads():
    assert derive_seed(0, 0) == derive_seed(0, 0)
    assert len({derive_seed(s, i) for s in range(10) for i in range(10)}) == 100


def test_score_continuations_equals_full_teacher_forcing(tiny64):
    from omniopd_verl.runtime.generation import score_continuations
    from omniopd_verl.runtime.scoring import score_token_ids

    model, tok = tiny64
    ps = prefixes(tok)
    conts = [[[5, 6, 7], [8]], [[9, 10, 11, 12, 13]], [], [[14, 15], [16, 17], [18, 19, 20]]]
    got = score_continuations(model, ps, conts, pad_token_id=tok.pad_token_id, max_rows=3)
    flat_p = [p for p, cs in zip(ps, conts, strict=True) for _ in cs]
    flat_c = [c for cs in conts for c in cs]
    ref = score_token_ids(model, flat_p, flat_c, pad_token_id=tok.pad_token_id)
    flat_got = [t for row in got for t in row]
    assert [len(t) for t in flat_got] == [len(c) for c in flat_c] and got[2] == []
    for g, (lp, _) in zip(flat_got, ref, strict=True):
        assert torch.allclose(g, lp, atol=1e-9)


def naive_distributions(model, prefix, text, bias_V=None):
    """log-distribution of each token of `text` from ONE unpadded, uncached forward of prefix + text."""
    ids = torch.tensor([list(prefix) + list(text)])
    logits = model(input_ids=ids).logits[0].double()
    if bias_V is not None:
        logits = logits + bias_V.double()
    return torch.log_softmax(logits, dim=-1)[len(prefix) - 1 : len(prefix) + len(text) - 1]


def test_continuation_distributions_equal_an_uncached_forward_with_and_without_a_bias(tiny64):
    from omniopd_verl.runtime.generation import continuation_distributions

    model, tok = tiny64
    ps = prefixes(tok)
    conts = [[[5, 6, 7], [8]], [[9, 10, 11, 12, 13]], [], [[14, 15], [], [18, 19, 20]]]
    V = model.get_output_embeddings().weight.shape[0]
    bias_V = torch.zeros(V)
    bias_V[[5, 9, 30]] = 3.0
    for bias in (None, bias_V):
        got = list(
            continuation_distributions(model, ps, conts, pad_token_id=tok.pad_token_id, max_rows=3, logit_bias_V=bias)
        )
        # every non-empty continuation once, empty ones never
        assert sorted((i, k) for i, k, _ in got) == [(0, 0), (0, 1), (1, 0), (3, 0), (3, 2)]
        for i, k, logp_TV in got:
            ref = naive_distributions(model, ps[i], conts[i][k], bias)
            assert logp_TV.shape == (len(conts[i][k]), V)
            assert torch.allclose(logp_TV.double(), ref, atol=1e-6)
    assert not model.training  # the fixture's model was in eval mode and stays so
