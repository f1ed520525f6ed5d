"""The `hf` rollout backend without Ray: its requests go through the project's one sampling loop
(`generation.sample_continuations`), checked against a naive one-sequence reference (greedy, and sampled
with vLLM's temperature / top-k / top-p and both log-prob modes), vLLM's prompt_logprobs layout, stop ids,
and the server's batching, weight updates and aborts. (The backend inside verl's trainer: test_main_ppo_cpu.py.)"""

from __future__ import annotations

import asyncio

import pytest
import torch

from omniopd_verl.core.seeds import stable_seed
from omniopd_verl.runtime.generation import sampling_logprobs
from omniopd_verl.verl_integration.cpu.hf_generation import GenerationRequest, generate_batch


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from omniopd_verl.runtime.models import make_tiny_random_model

    path = make_tiny_random_model(tmp_path_factory.mktemp("hf_rollout") / "tiny")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    return path, model, AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def naive_greedy(model, prompt: list[int], n: int, *, near_tie: float = 1e-4) -> tuple[list[int], list[float]]:
    """No cache, no padding, no batch: one full forward per new token.

    Stops early at a near tie (top-2 log-probs closer than `near_tie`): there the batched, left-padded path
    may legitimately pick the other token, since float32 kernels differ in the last bits between batch shapes
    and between CPUs (AVX2 vs AVX-512). The tokens up to the tie must match exactly on any machine."""
    ids, toks, lps = list(prompt), [], []
    for _ in range(n):
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
        top2 = lp.topk(2).values
        if float(top2[0] - top2[1]) < near_tie:
            break
        tok = int(lp.argmax())
        toks.append(tok)
        lps.append(float(lp[tok]))
        ids.append(tok)
    return toks, lps


PROMPTS = [[1, 50, 60, 70, 80, 90], [1, 200, 300], [1, 5, 6, 7, 8, 9, 10, 11, 12]]


def test_batched_greedy_equals_the_naive_reference_under_left_padding(tiny):
    _, model, tok = tiny
    requests = [GenerationRequest(p, max_tokens=6, temperature=0.0) for p in PROMPTS]
    results = generate_batch(model, requests, eos_token_ids=set(), pad_token_id=tok.pad_token_id or 0)
    for prompt, result in zip(PROMPTS, results, strict=True):
        toks, lps = naive_greedy(model, prompt, 6)
        assert len(toks) >= 3  # the comparison covers most of the response, not an early tie
        assert result.token_ids[: len(toks)] == toks
        assert result.log_probs[: len(toks)] == pytest.approx(lps, abs=1e-5)
        assert result.stop_reason == "completed"


def test_sampling_is_per_request_reproducible_and_independent_of_the_batch(tiny):
    _, model, tok = tiny
    requests = [
        GenerationRequest(p, max_tokens=8, temperature=1.0, seed=stable_seed(f"r{i}")) for i, p in enumerate(PROMPTS)
    ]
    together = generate_batch(model, requests, eos_token_ids=set(), pad_token_id=0)
    alone = [generate_batch(model, [r], eos_token_ids=set(), pad_token_id=0)[0] for r in requests]
    for a, b in zip(together, alone, strict=True):
        assert a.token_ids == b.token_ids
        assert a.log_probs == pytest.approx(b.log_probs, abs=1e-5)
    assert len({tuple(r.token_ids) for r in together}) > 1


def test_eos_and_max_tokens_stop_each_row_on_its_own(tiny):
    _, model, _ = tiny
    greedy0, _ = naive_greedy(model, PROMPTS[0], 1)
    greedy1, _ = naive_greedy(model, PROMPTS[1], 3)
    eos = greedy0[0]  # row 0 ends at its first token; row 1 goes on to max_tokens (or its own eos)
    requests = [
        GenerationRequest(PROMPTS[0], max_tokens=10, temperature=0.0),
        GenerationRequest(PROMPTS[1], max_tokens=3, temperature=0.0),
    ]
    results = generate_batch(model, requests, eos_token_ids={eos}, pad_token_id=0)
    assert results[0].token_ids == [eos]
    expected1 = greedy1[: greedy1.index(eos) + 1] if eos in greedy1 else greedy1
    assert results[1].token_ids == expected1


@pytest.fixture(scope="module")
def tiny64(tiny):
    """The tiny model in float64: it is near-uniform over 49k tokens, where float32's batch-shape rounding
    would move an inverse-CDF draw by a token id; in float64 the batched rows and the one-sequence
    reference see the same float32 logits. Loaded as the project loads models (eager attention in float64
    turns fully masked padding rows into NaN)."""
    from omniopd_verl.runtime.models import load_causal_lm

    return load_causal_lm(tiny[0], dtype=torch.float64)[0].eval()


@torch.no_grad()
def naive_sampled(model, prompt, n, *, seed, temperature, top_k, top_p):
    """No cache, no padding, no batch, one row: vLLM's filter written out per token (sorted logits, keep the
    k best, keep the smallest prefix whose mass reaches top_p), then the inverse CDF with the request's
    uniforms. Returns tokens, processed log-probs (of the filtered distribution) and raw log-probs."""
    g = torch.Generator().manual_seed(seed)
    ids, toks, processed, raw = list(prompt), [], [], []
    for _ in range(n):
        logits = model(torch.tensor([ids])).logits[0, -1].float()
        u = torch.rand(1, generator=g)
        scaled = logits / temperature
        order = torch.argsort(scaled, descending=True)[:top_k]  # top-k first; top-p on what is left
        top_probs = torch.softmax(scaled[order], -1)
        keep = torch.zeros_like(scaled, dtype=torch.bool)
        mass = 0.0
        for t, p in zip(order.tolist(), top_probs.tolist(), strict=True):
            if mass >= top_p:
                break
            keep[t] = True
            mass += p
        probs = torch.softmax(scaled, -1)
        kept = torch.where(keep, probs, torch.zeros_like(probs))
        cdf = kept.cumsum(-1)
        tok = int(torch.searchsorted(cdf, (u * cdf[-1]).unsqueeze(-1)).squeeze())
        toks.append(tok)
        processed.append(float(torch.log(kept[tok] / kept.sum())))
        raw.append(float(torch.log_softmax(logits, -1)[tok]))
        ids.append(tok)
    return toks, processed, raw


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 50, 1.0), (0.7, 200, 0.9), (1.3, -1, 0.95)])
def test_sampled_rows_equal_a_one_sequence_reference_in_both_logprob_modes(tiny64, temperature, top_k, top_p):
    model = tiny64
    seeds = [stable_seed("s", i) for i in range(len(PROMPTS))]
    for mode in ("processed_logprobs", "raw_logprobs"):
        requests = [
            GenerationRequest(
                p, max_tokens=6, temperature=temperature, top_k=top_k, top_p=top_p, seed=s, logprobs_mode=mode
            )  # fmt: skip
            for p, s in zip(PROMPTS, seeds, strict=True)
        ]
        results = generate_batch(model, requests, eos_token_ids=set(), pad_token_id=0)
        for p, s, res in zip(PROMPTS, seeds, results, strict=True):
            toks, processed, raw = naive_sampled(
                model, p, 6, seed=s, temperature=temperature, top_k=top_k if top_k > 0 else 10**9, top_p=top_p
            )
            assert res.token_ids == toks
            assert res.log_probs == pytest.approx(processed if mode == "processed_logprobs" else raw, abs=1e-4)


def test_requests_with_different_parameters_share_a_batch(tiny64):
    """Per-request temperature / top-k / top-p in one batch: each row as it is alone."""
    model = tiny64
    requests = [
        GenerationRequest(PROMPTS[0], max_tokens=5, temperature=0.0),
        GenerationRequest(PROMPTS[1], max_tokens=5, temperature=1.2, top_k=20, seed=3),
        GenerationRequest(PROMPTS[2], max_tokens=5, temperature=0.8, top_p=0.7, seed=4),
    ]
    together = generate_batch(model, requests, eos_token_ids=set(), pad_token_id=0)
    for r, res in zip(requests, together, strict=True):
        [alone] = generate_batch(model, [r], eos_token_ids=set(), pad_token_id=0)
        assert res.token_ids == alone.token_ids
        assert res.log_probs == pytest.approx(alone.log_probs, abs=1e-5)


def test_stop_token_ids_and_ignore_eos(tiny):
    _, model, _ = tiny
    greedy, _ = naive_greedy(model, PROMPTS[2], 4)
    stop = greedy[1]
    [res] = generate_batch(
        model, [GenerationRequest(PROMPTS[2], max_tokens=4, temperature=0.0, stop_token_ids=(stop,))],
        eos_token_ids=set(), pad_token_id=0,
    )  # fmt: skip
    assert res.token_ids == greedy[: greedy.index(stop) + 1]
    eos = greedy[0]
    [res] = generate_batch(
        model, [GenerationRequest(PROMPTS[2], max_tokens=4, temperature=0.0, ignore_eos=True)],
        eos_token_ids={eos}, pad_token_id=0,
    )  # fmt: skip
    assert res.token_ids == greedy  # EOS ignored: the row runs to max_tokens


def test_an_abort_stops_unfinished_rows_with_their_tokens_so_far(tiny):
    _, model, _ = tiny
    calls = []

    def should_abort():
        calls.append(1)
        return len(calls) > 2  # two tokens, then the abort

    results = generate_batch(
        model, [GenerationRequest(p, max_tokens=8, temperature=0.0) for p in PROMPTS],
        eos_token_ids=set(), pad_token_id=0, should_abort=should_abort,
    )  # fmt: skip
    for p, res in zip(PROMPTS, results, strict=True):
        assert res.stop_reason == "aborted" and len(res.token_ids) == 2
        expected = naive_greedy(model, p, 2)[0]
        assert res.token_ids[: len(expected)] == expected


def test_sampling_logprobs_follow_vllms_temperature_top_k_top_p():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    lp = sampling_logprobs(logits, temperature=2.0, top_k=-1, top_p=1.0)
    assert torch.allclose(lp, torch.log_softmax(logits / 2.0, -1))
    lp = sampling_logprobs(logits, temperature=1.0, top_k=2, top_p=1.0)
    assert torch.isfinite(lp).tolist() == [True, True, False, False, False]
    assert torch.allclose(lp[:2], torch.log_softmax(logits[:2], -1))
    p = torch.softmax(logits, -1)
    lp = sampling_logprobs(logits, temperature=1.0, top_k=-1, top_p=float(p[0] + p[1] / 2))
    assert torch.isfinite(lp).tolist() == [True, True, False, False, False]  # smallest prefix reaching top_p
    assert float(lp.exp().sum()) == pytest.approx(1.0)


def test_prompt_logprobs_in_vllms_layout(tiny):
    _, model, _ = tiny
    prompt = PROMPTS[2]
    with torch.no_grad():
        raw = torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), -1)
    for k in (0, 3):
        [res] = generate_batch(
            model,
            [GenerationRequest(prompt, max_tokens=1, temperature=0.0, prompt_logprobs=k)],
            eos_token_ids=set(),
            pad_token_id=0,
        )
        assert len(res.prompt_ids) == len(res.prompt_logprobs) == len(prompt)
        assert res.prompt_logprobs[-1] == [0.0] * max(k, 1)  # the dummy last row
        for i in range(len(prompt) - 1):
            if k == 0:
                assert res.prompt_ids[i] == [prompt[i + 1]]
                assert res.prompt_logprobs[i][0] == pytest.approx(float(raw[i, prompt[i + 1]]), abs=1e-5)
            else:
                values, ids = raw[i].topk(k)
                assert res.prompt_ids[i] == ids.tolist()
                assert res.prompt_logprobs[i] == pytest.approx(values.tolist(), abs=1e-5)


def test_bad_sampling_values_name_the_key():
    with pytest.raises(ValueError, match="top_p=0"):
        GenerationRequest([1, 2], max_tokens=2, top_p=0.0)
    with pytest.raises(ValueError, match="logprobs_mode='raw_logits'"):
        GenerationRequest([1, 2], max_tokens=2, logprobs_mode="raw_logits")


def test_server_batches_concurrent_requests_updates_weights_and_aborts(tiny, monkeypatch):
    from omniopd_verl.verl_integration.cpu import hf_rollout
    from omniopd_verl.verl_integration.cpu.hf_rollout import HFRolloutServer

    path, model, _ = tiny
    batches = []  # the size of every batch the server generates (the server itself keeps none)
    real_generate_batch = hf_rollout.generate_batch

    def counting_generate_batch(model, requests, **kwargs):
        batches.append(len(requests))
        return real_generate_batch(model, requests, **kwargs)

    monkeypatch.setattr(hf_rollout, "generate_batch", counting_generate_batch)

    async def scenario():
        server = HFRolloutServer({"prompt_length": 16, "response_length": 8}, {"path": path}, replica_rank=0)
        outs = await asyncio.gather(
            *[
                server.generate(p, {"temperature": 0.0, "max_tokens": 4, "logprobs": True}, f"id{i}")
                for i, p in enumerate(PROMPTS)
            ]
        )
        assert batches == [3]  # the three concurrent requests ran as one batch
        for p, out in zip(PROMPTS, outs, strict=True):
            expected = naive_greedy(model, p, 4)[0]  # up to a near tie, if any
            assert out.token_ids[: len(expected)] == expected and out.stop_reason == "completed"
        with pytest.raises(ValueError, match="not supported by the hf rollout"):
            await server.generate(PROMPTS[0], {"best_of": 2}, "bad")
        # weights from the actor: every tensor, then the server samples from them
        state = {k: v + 0.01 for k, v in model.state_dict().items()}
        before = server.stats()["param_checksum"]
        await server.update_weights(state, global_steps=3)
        assert server.stats()["weight_updates"] == 1 and server.stats()["param_checksum"] != before
        out = await server.generate(PROMPTS[0], {"temperature": 0.0, "max_tokens": 2}, "after")
        assert out.extra_fields["global_steps"] == 3
        # abort: pending requests come back 'aborted', new ones wait for resume_generation
        task = asyncio.ensure_future(server.generate(PROMPTS[1], {"temperature": 1.0, "max_tokens": 8}, "long"))
        await asyncio.sleep(0)
        await server.abort_all_requests()
        assert (await task).stop_reason == "aborted"
        waiting = asyncio.ensure_future(server.generate(PROMPTS[1], {"temperature": 0.0, "max_tokens": 1}, "held"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await server.resume_generation()
        assert (await waiting).stop_reason == "completed"
        await server.sleep()
        await server.wake_up(["weights"])  # no-ops on CPU

    asyncio.run(scenario())
