"""The in-process teachers: transformers (tiny random model and real SmolLM2) and vLLM (absent here)."""

from __future__ import annotations

import asyncio
import sys
import types

import pytest
import torch

from omniopd_verl import registry
from omniopd_verl.config import TeacherConfig
from omniopd_verl.errors import PluginError
from omniopd_verl.protocols import TeacherBackend, TeacherRequest
from omniopd_verl.teachers.prompts import CONTEXT_SYSTEM_TEMPLATE
from omniopd_verl.teachers.transformers_local import LocalSampler


@pytest.fixture(scope="module")
def tiny_sampler(tiny_model_path):
    # float64: a request sampled alone must equal the same request in a batch, on every CPU. In float32 the
    # batch shape picks other matmul kernels (AVX2 vs AVX-512 differ), and the near-uniform tiny model turns a
    # last-bit difference into another token.
    from omniopd_verl.runtime.models import load_causal_lm

    model, tokenizer = load_causal_lm(tiny_model_path, dtype=torch.float64)
    return LocalSampler(model, tokenizer)


def req(i, *, n=3, student_tokens=6, seed=None, context=None, messages=None, prefix=" Then"):
    return TeacherRequest(
        f"u{i}:{i}",
        f"Story {i}:",
        prefix,
        n=n,
        student_tokens=student_tokens,
        seed=100 + i if seed is None else seed,
        prompt_messages=messages,
        teacher_context=context,
    )


def shared(sampler):
    """The engine's way to hand the teacher a loaded model: options.model 'reference' + the resource."""
    return {"reference_model": (sampler.model, sampler.tokenizer)}


def teacher(sampler, tmp_path=None, **kw):
    config = TeacherConfig(
        name="transformers",
        model="tiny",
        cache_path=str(tmp_path / "c.sqlite") if tmp_path else None,
        options={"model": "reference"},
        **kw,
    )
    return registry.create_teacher(config, resources=shared(sampler))


class CountingModel:
    """The real model, with its forward calls counted: prefills (empty cache in) and decode steps."""

    def __init__(self, model):
        self.model, self.generate_calls, self.rows, self.decode_rows, self.new_tokens = model, 0, [], [], []
        self.forward = model.forward  # the generation loop inspects its signature (logits_to_keep)

    def __getattr__(self, name):  # parameters(), eval(), training, ...
        return getattr(self.model, name)

    def __call__(self, **kwargs):
        if kwargs["past_key_values"].get_seq_length() == 0:  # a prefill starts one generation
            self.generate_calls += 1
            self.rows.append(kwargs["input_ids"].shape[0])
            self.new_tokens.append(1)
        else:
            self.decode_rows.append(kwargs["input_ids"].shape[0])
            self.new_tokens[-1] += 1
        return self.model(**kwargs)


def test_tiny_model_samples_are_seeded_batched_and_bounded(tiny_sampler, tmp_path):
    counting = CountingModel(tiny_sampler.model)
    sampler = LocalSampler(counting, tiny_sampler.tokenizer)
    t = teacher(sampler, tmp_path)
    assert isinstance(t, TeacherBackend)
    reqs = [req(0), req(1), req(2, n=2)]

    async def two_responses_at_once():  # the Auditor audits many responses concurrently
        return await asyncio.gather(t.sample(reqs[:2]), t.sample(reqs[2:]))

    a, b = asyncio.run(two_responses_at_once())
    results = a + b
    # one generation for everything: one prefill row per request, then its n samples decode from copies
    assert counting.generate_calls == 1 and counting.rows == [3]
    assert set(counting.decode_rows) == {3 + 3 + 2}
    assert [len(r.texts) for r in results] == [3, 3, 2]
    assert counting.new_tokens == [6]  # student_tokens x max_tokens_factor 1.0
    assert len({t for r in results for t in r.texts}) > 4  # samples differ
    # same seed -> same texts, alone or in another batch; another seed -> other texts
    alone = asyncio.run(teacher(sampler).sample([req(1)]))[0]
    assert alone.texts == results[1].texts
    other = asyncio.run(teacher(sampler).sample([req(1, seed=999)]))[0]
    assert other.texts != results[1].texts
    m = t.metrics()
    assert m["teacher/calls"] == 3 and m["teacher/completion_tokens"] > 0 and m["teacher/seconds"] > 0
    # a rerun is served from the cache without generating
    before = counting.generate_calls
    again = teacher(sampler, tmp_path)
    cached = asyncio.run(again.sample(reqs))
    assert counting.generate_calls == before and [r.texts for r in cached] == [r.texts for r in results]
    assert again.metrics()["teacher/cache_hits"] == 3


def test_greedy_and_tiny_top_p_equal_huggingface_greedy(tiny_sampler):
    """Independent reference: temperature 0, or top-p so small only the top token survives, is greedy."""
    tok, model = tiny_sampler.tokenizer, tiny_sampler.model
    prompts = ["Story 0: Then", "A much longer story prompt 1: and then"]
    reference = []
    for p in prompts:
        ids = tok(p, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.eos_token_id)
        reference.append(tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    greedy = tiny_sampler.sample(prompts, n=2, max_new_tokens=5, temperature=0.0, top_p=1.0, seed=[1, 2])
    nucleus = tiny_sampler.sample(prompts, n=2, max_new_tokens=5, temperature=1.0, top_p=1e-6, seed=[1, 2])
    assert greedy == nucleus == [[r, r] for r in reference]


def test_sampling_follows_the_model_distribution(tiny_sampler):
    """First-token frequencies over many rows match softmax(logits / T) (chi-square-style bound)."""
    tok, model = tiny_sampler.tokenizer, tiny_sampler.model
    prompt = "Story 0: Then"
    temperature = 0.05  # sharpen the random model's near-uniform distribution onto a few tokens
    with torch.inference_mode():
        logits = model(**tok(prompt, return_tensors="pt")).logits[0, -1].float()
    probs = torch.softmax(logits / temperature, dim=-1)
    rows = 400
    texts = tiny_sampler.sample([prompt], n=rows, max_new_tokens=1, temperature=temperature, top_p=1.0, seed=5)[0]
    top = probs.topk(3)
    for p, token in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        expected = tok.decode([token])
        freq = sum(t == expected for t in texts) / rows
        assert abs(freq - p) < 4 * (p * (1 - p) / rows) ** 0.5 + 0.01, (expected, freq, p)


def test_teacher_context_goes_into_the_prompt(tiny_sampler):
    t = teacher(tiny_sampler)
    plain, _, _ = t.render(req(0, context="The answer is 7."))
    assert plain == "The answer is 7.\n\nStory 0: Then"
    messages = ({"role": "user", "content": "What is 3+4?"},)
    chat, _, _ = t.render(req(0, context="The answer is 7.", messages=messages, prefix="It is"))
    expected = (
        tiny_sampler.tokenizer.apply_chat_template(
            [{"role": "system", "content": CONTEXT_SYSTEM_TEMPLATE.format(context="The answer is 7.")}, *messages],
            tokenize=False,
            add_generation_prompt=True,
        )
        + "It is"
    )
    assert chat == expected and "The answer is 7." in chat
    assert t.render(req(0, messages=messages))[0] == "Story 0: Then"  # no context: the student's exact text
    results = asyncio.run(t.sample([req(0, context="The answer is 7.", messages=messages)]))
    assert len(results[0].texts) == 3


def test_transformers_teacher_through_the_registry_with_smollm2(smollm2_path, tmp_path):
    from omniopd_verl import registry

    config = TeacherConfig(name="transformers", model="smollm2-135m-instruct", options={"batch_rows": 8})
    t = registry.create_teacher(config)
    prompt = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    request = TeacherRequest("q:3", prompt, "2 + 3 =", n=2, student_tokens=8, seed=11)
    results = asyncio.run(t.sample([request]))
    assert len(results[0].texts) == 2 and all(isinstance(s, str) and s.strip() for s in results[0].texts)
    assert t.metrics()["teacher/prompt_tokens"] > 10


def test_transformers_teacher_validates_options():
    with pytest.raises(Exception, match="unknown keys"):
        registry.create_teacher(TeacherConfig(name="transformers", model="x", options={"batchrows": 3}))
    with pytest.raises(Exception, match="teacher.model"):
        registry.create_teacher(TeacherConfig(name="transformers"))
    with pytest.raises(Exception, match="needs the engine's reference model"):
        registry.create_teacher(TeacherConfig(name="transformers", model="x", options={"model": "reference"}))


def test_vllm_teacher_without_vllm_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as on this machine: not installed
    cls = registry.load("teachers", "vllm")
    with pytest.raises(PluginError, match="not installed") as info:
        cls(TeacherConfig(name="vllm", model="Qwen/Qwen3-32B"))
    assert "openai_completions" in str(info.value)


def fake_vllm():
    """Mimics vLLM's offline API: LLM(model, **kw).generate(prompts, params_list, use_tqdm) -> RequestOutput."""
    module = types.SimpleNamespace(calls=[])

    class SamplingParams:
        def __init__(self, n=1, max_tokens=16, temperature=1.0, top_p=1.0, seed=None):
            self.n, self.max_tokens, self.temperature, self.top_p, self.seed = n, max_tokens, temperature, top_p, seed

    class LLM:
        def __init__(self, model, **kwargs):
            self.model, self.kwargs = model, kwargs

        def generate(self, prompts, sampling_params, use_tqdm=True):
            module.calls.append((list(prompts), list(sampling_params)))
            outs = []
            for prompt, params in zip(prompts, sampling_params, strict=True):
                completions = [
                    types.SimpleNamespace(text=f" s{params.seed}-{j}", token_ids=[1] * params.max_tokens)
                    for j in range(params.n)
                ]
                outs.append(
                    types.SimpleNamespace(
                        prompt=prompt, prompt_token_ids=[0] * len(prompt.split()), outputs=completions
                    )
                )
            return outs

    module.LLM, module.SamplingParams = LLM, SamplingParams
    return module


def test_vllm_request_translation(tmp_path):
    vllm = fake_vllm()
    config = TeacherConfig(
        name="vllm",
        model="m",
        temperature=0.7,
        top_p=0.9,
        cache_path=str(tmp_path / "c.db"),
        options={"gpu_memory_utilization": 0.5},
    )
    t = registry.create_teacher(config, resources={"vllm_module": vllm})
    assert t.plugin.llm.kwargs == {"gpu_memory_utilization": 0.5}
    results = asyncio.run(t.sample([req(0, n=2), req(1, n=3, context="ctx")]))
    prompts, params = vllm.calls[0]
    assert len(vllm.calls) == 1 and prompts == ["Story 0: Then", "ctx\n\nStory 1: Then"]
    assert [(p.n, p.max_tokens, p.temperature, p.top_p, p.seed) for p in params] == [
        (2, 6, 0.7, 0.9, 100),
        (3, 6, 0.7, 0.9, 101),
    ]
    assert results[1].texts == [" s101-0", " s101-1", " s101-2"]
    assert t.metrics()["teacher/completion_tokens"] == 5 * 6
    assert asyncio.run(t.sample([req(0, n=2)]))[0].cached and len(vllm.calls) == 1


def test_steered_teacher_keeps_its_own_cache_entries(tiny_sampler, tmp_path):
    """Plugin options are part of the cache key: a steered teacher never reads an unsteered one's samples."""
    steer = {"tokens": "arithmetic", "bias": 4.0}
    cache = str(tmp_path / "c.sqlite")

    def make(options):
        config = TeacherConfig(
            name="transformers", model="tiny", cache_path=cache, options={"model": "reference", **options}
        )
        return registry.create_teacher(config, resources=shared(tiny_sampler))

    plain = asyncio.run(make({}).sample([req(0)]))[0]
    steered_teacher = make({"steer": steer})
    steered = asyncio.run(steered_teacher.sample([req(0)]))[0]
    assert not plain.cached and not steered.cached  # same prefix, seed and weights: still a miss
    assert steered.texts != plain.texts
    again = asyncio.run(make({"steer": steer}).sample([req(0)]))[0]
    assert again.cached and again.texts == steered.texts
    assert asyncio.run(make({}).sample([req(0)]))[0].texts == plain.texts
    assert steered_teacher.plugin.sampler is not tiny_sampler and tiny_sampler.logit_bias_V is None
    assert int((steered_teacher.plugin.sampler.logit_bias_V == 4.0).sum()) == 175
