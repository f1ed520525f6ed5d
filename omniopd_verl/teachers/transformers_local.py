"""`transformers` teacher: a local causal LM sampled in-process (CPU or one GPU), batched and seeded.

Raw-prefix continuation, like an open-weight teacher behind vLLM: the teacher sees
`teacher_context_block + prompt_text + response_prefix` and continues it. With a `teacher_context`
(privileged text such as a reference solution) and a chat model, the context goes into the prompt as
an extra system message when `prompt_messages` are given (the chat template is re-rendered and the
partial answer appended); otherwise it is prepended as plain text (see `context_prefix`).

Speed: every request waiting at that moment goes into one generation (up to `options.batch_rows`
sample rows), through the project's one sampling loop (`omniopd_verl.generation`): each request's
prefix is prefilled ONCE and its n samples decode from copies of that KV cache (vLLM's n-sampling);
concurrent `sample` calls from the Auditor are micro-batched together. Each request's samples come
from a torch.Generator seeded by its seed, so they do not depend on the rest of the batch; reruns are
bit-identical.

Options: device ("cpu"; "cuda" for one GPU), dtype ("float32" | "bfloat16" | "float16"),
batch_rows (64), max_tokens_factor (1.0: teacher tokens per student token requested),
steer (null; {tokens: arithmetic, bias: 4.0} makes it the demonstration teacher of
`omniopd_verl.demo_teacher`: the logits of that token set raised by `bias`).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

from omniopd_verl.config import TeacherConfig
from omniopd_verl.errors import ConfigError
from omniopd_verl.teachers.accounting import TeacherMeter
from omniopd_verl.teachers.base import TeacherCapabilities, TeacherRequest, TeacherResult
from omniopd_verl.teachers.cache import TeacherCache, cache_key

CONTEXT_SYSTEM_TEMPLATE = (
    "Privileged information for you only (the user does not see it); use it to answer well:\n{context}"
)
RAW_CONTEXT_TEMPLATE = "{context}\n\n"


def context_prefix(teacher_context: str | None) -> str:
    """The plain-text block prepended to a raw prefix when there is a teacher_context."""
    return RAW_CONTEXT_TEMPLATE.format(context=teacher_context) if teacher_context else ""


class LocalSampler:
    """Batched, per-request-seeded sampling of text continuations from a causal LM."""

    def __init__(self, model: Any, tokenizer: Any, device: str = "cpu"):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        # left padding is done by hand below: the tokenizer may be shared with the student, leave it alone
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = pad
        self.eos_token_ids = eos_token_ids(model, tokenizer)
        self.logit_bias_V = None  # an optional [V] logit bias (a steered demonstration teacher)
        self.share_prefix = None  # False = prefill every sample's row separately (benchmark baseline)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, name_or_path: str, *, device: str = "cpu", dtype: str | None = None) -> LocalSampler:
        import torch

        from omniopd_verl.models import load_causal_lm

        dtypes = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in dtypes:
            raise ConfigError(f"omniopd.teacher.options.dtype={dtype!r} is invalid: allowed one of {list(dtypes)}")
        model, tokenizer = load_causal_lm(name_or_path, dtype=dtypes[dtype], device=device)
        return cls(model, tokenizer, device)

    def render_chat(self, messages: Sequence[dict[str, Any]]) -> str:
        """Chat messages as prompt text; a trailing assistant message is continued, not closed."""
        messages = list(messages)
        if messages and messages[-1]["role"] == "assistant":
            return self.tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def sample(
        self,
        prompts: Sequence[str],
        *,
        n: int | Sequence[int],
        max_new_tokens: int | Sequence[int],
        temperature: float,
        top_p: float,
        seed: int | Sequence[int],
    ) -> list[list[str]]:
        """For each prompt, `n` continuations (text of the new tokens only, special tokens removed).

        One prefill per prompt, its n samples decoded from copies of that KV cache
        (`omniopd_verl.generation.sample_continuations`); each request's samples depend on its seed only.
        """
        from omniopd_verl.generation import sample_continuations

        bos = self.tokenizer.bos_token
        encoded = []
        for prompt in prompts:
            # a chat-templated prompt may already start with BOS text: do not add a second one
            add_special = not (bos and prompt.startswith(bos))
            encoded.append(self.tokenizer(prompt, add_special_tokens=add_special)["input_ids"])
        with self._lock:
            samples = sample_continuations(
                self.model,
                encoded,
                n=n,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seeds=seed,
                pad_token_id=self.pad_token_id,
                eos_token_ids=self.eos_token_ids,
                logit_bias_V=self.logit_bias_V,
                share_prefix=self.share_prefix,
            )
        return [[self.tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in row] for row in samples]


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS plus the model's generation-config EOS ids (where a sample stops)."""
    ids = set()
    for source in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(x) for x in source)
    return sorted(ids)


class TransformersTeacher:
    """The `transformers` teacher plugin: `TransformersTeacher(config)`; config.model = path or built-in name."""

    name = "transformers"
    capabilities = TeacherCapabilities(supports_n=True, supports_prefill=True, supports_seed=True, raw_completion=True)

    def __init__(self, config: TeacherConfig, sampler: LocalSampler | None = None):
        if not config.model and sampler is None:
            raise ConfigError(
                "omniopd.teacher.model=None is invalid for the transformers teacher: allowed a local model folder "
                "or 'smollm2-135m-instruct'"
            )
        self.config = config
        options = dict(config.options)
        self.batch_rows = int(options.pop("batch_rows", 64))
        self.max_tokens_factor = float(options.pop("max_tokens_factor", 1.0))
        device = options.pop("device", "cpu")
        dtype = options.pop("dtype", None)
        self.steer = options.pop("steer", None)
        if options:
            raise ConfigError(
                f"omniopd.teacher.options has unknown keys {sorted(options)} for the transformers teacher: "
                "allowed device, dtype, batch_rows, max_tokens_factor, steer"
            )
        self.sampler = sampler or LocalSampler.load(config.model, device=device, dtype=dtype)
        if self.steer is not None:  # a demonstration teacher (omniopd_verl.demo_teacher); never shared state
            from omniopd_verl.demo_teacher import steer_bias

            base = self.sampler
            self.sampler = LocalSampler(base.model, base.tokenizer, base.device)
            vocab = base.model.get_output_embeddings().weight.shape[0]
            self.sampler.logit_bias_V = steer_bias(base.tokenizer, vocab, self.steer)
        self.meter = TeacherMeter(config.max_cost_usd)
        self.cache = TeacherCache(config.cache_path) if config.cache_path else None
        self._pending: list[tuple[TeacherRequest, str, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None

    def teacher_prompt(self, request: TeacherRequest) -> str:
        """Exactly the text the model continues (see the module docstring for teacher_context)."""
        if request.teacher_context and request.prompt_messages:
            messages = [{"role": "system", "content": CONTEXT_SYSTEM_TEMPLATE.format(context=request.teacher_context)}]
            messages += list(request.prompt_messages)
            return self.sampler.render_chat(messages) + request.response_prefix
        return context_prefix(request.teacher_context) + request.prefix_text

    def _max_new_tokens(self, request: TeacherRequest) -> int:
        return max(1, math.ceil(request.student_tokens * self.max_tokens_factor))

    def _key(self, request: TeacherRequest, prompt: str) -> str:
        return cache_key(
            backend=self.name,
            model=str(self.config.model) + (f"+steer{sorted(self.steer.items())}" if self.steer else ""),
            prefix=prompt,
            n=request.n,
            teacher_max_tokens=self._max_new_tokens(request),
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            seed=request.seed,
        )

    async def sample(self, requests: Sequence[TeacherRequest]) -> list[TeacherResult]:
        loop = asyncio.get_running_loop()
        results: list[TeacherResult | None] = [None] * len(requests)
        waits = []
        for i, request in enumerate(requests):
            prompt = self.teacher_prompt(request)
            key = self._key(request, prompt)
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                self.meter.cache_hit()
                results[i] = TeacherResult(request.request_id, hit["texts"], cached=True)
                continue
            future = loop.create_future()
            self._pending.append((request, prompt, future))
            waits.append((i, future))
        if waits and (self._worker is None or self._worker.done()):
            self._worker = asyncio.create_task(self._drain())
        for i, future in waits:
            results[i] = await future
        return results  # type: ignore[return-value]

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let concurrent sample() calls enqueue before the first batch
        while self._pending:
            batch, rows = [], 0
            while self._pending and (not batch or rows + self._pending[0][0].n <= self.batch_rows):
                item = self._pending.pop(0)
                batch.append(item)
                rows += item[0].n
            try:
                results = await asyncio.to_thread(self._generate, batch)
            except Exception as exc:  # a local generation error is a bug: surface it to every caller
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except asyncio.CancelledError:
                for _, _, future in batch + self._pending:
                    future.cancel()
                self._pending.clear()
                raise
            for (_, _, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _generate(self, batch: list[tuple[TeacherRequest, str, asyncio.Future]]) -> list[TeacherResult]:
        start = time.perf_counter()
        requests = [r for r, _, _ in batch]
        texts = self.sampler.sample(
            [p for _, p, _ in batch],
            n=[r.n for r in requests],
            max_new_tokens=[self._max_new_tokens(r) for r in requests],
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            seed=[r.seed for r in requests],
        )
        seconds = time.perf_counter() - start
        tok = self.sampler.tokenizer
        results = []
        for (request, prompt, _), samples in zip(batch, texts, strict=True):
            prompt_tokens = len(tok(prompt, add_special_tokens=False)["input_ids"])
            completion_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in samples)
            share = seconds / len(batch)
            self.meter.record_call(
                prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=0.0, seconds=share
            )
            if self.cache is not None:
                self.cache.put(self._key(request, prompt), {"texts": samples})
            results.append(
                TeacherResult(
                    request.request_id,
                    samples,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    seconds=share,
                )
            )
        return results

    def metrics(self) -> dict[str, float]:
        return self.meter.snapshot()

    async def aclose(self) -> None:
        if self.cache is not None:
            self.cache.close()
