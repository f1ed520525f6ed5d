"""`transformers` teacher: a local causal LM sampled in-process (CPU or one GPU), batched and seeded.

Raw-prefix continuation, like an open-weight teacher behind vLLM: the teacher sees
`teacher_context_block + prompt_text + response_prefix` and continues it. With a `teacher_context`
(privileged text such as a reference solution) and a chat model, the context goes into the prompt as
an extra system message when `prompt_messages` are given (the chat template is re-rendered and the
partial answer appended); otherwise it is prepended as plain text (see `context_prefix`).

Speed: every sample of every request waiting at that moment goes into one `generate` call (up to
`options.batch_rows` rows), left-padded, with the KV cache and no grad; concurrent `sample` calls from
the Auditor are micro-batched together. Sampling uses Hugging Face's decoding loop (cache, padding,
EOS) with a logits processor that draws each row's token from a torch.Generator seeded by its
request's seed (temperature and top-p applied first), then forces greedy decoding onto that draw.
Reruns of the same batch are bit-identical; the cache keeps reruns identical in any case.

Options: device ("cpu"; "cuda" for one GPU), dtype ("float32" | "bfloat16" | "float16"),
batch_rows (64), max_tokens_factor (1.0: teacher tokens per student token requested).
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
        """For each prompt, `n` continuations (text of the new tokens only, special tokens removed)."""
        import torch

        count = len(prompts)
        ns = [n] * count if isinstance(n, int) else list(n)
        seeds = [seed] * count if isinstance(seed, int) else list(seed)
        limits = [max_new_tokens] * count if isinstance(max_new_tokens, int) else list(max_new_tokens)
        rows = [i for i, k in enumerate(ns) for _ in range(k)]
        if not rows:
            return [[] for _ in prompts]
        bos = self.tokenizer.bos_token
        encoded = []
        for i in rows:
            # a chat-templated prompt may already start with BOS text: do not add a second one
            add_special = not (bos and prompts[i].startswith(bos))
            encoded.append(self.tokenizer(prompts[i], add_special_tokens=add_special)["input_ids"])
        width = max(len(ids) for ids in encoded)
        pad = self.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=self.device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=self.device)
        generators = []
        for s in seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(int(s) % (2**63))
            generators.append(g)
        processor = _SeededSampling(rows, generators, temperature, top_p)
        row_limits = [limits[i] for i in rows]
        with self._lock, torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max(row_limits),
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=[processor],
                pad_token_id=pad,
                use_cache=True,
            )
        new_tokens = out[:, width:].tolist()
        results: list[list[str]] = [[] for _ in prompts]
        for row, i in enumerate(rows):
            ids = new_tokens[row][: row_limits[row]]
            results[i].append(self.tokenizer.decode(ids, skip_special_tokens=True))
        return results


class _SeededSampling:
    """A logits processor that samples each row from its request's generator, then forces that token.

    Hugging Face's greedy loop then picks the forced token; it keeps the KV cache, the padding and the
    per-row EOS handling. Rows of one request share its generator, drawn in row order, so the result
    depends only on the request's seed and the logits (which may differ in the last bits with batching).
    """

    def __init__(self, rows: list[int], generators: list[Any], temperature: float, top_p: float):
        self.rows = rows
        self.generators = generators
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        logits = scores.float()
        if self.temperature == 0:
            chosen = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(logits / self.temperature, dim=-1)
            if self.top_p < 1.0:
                sorted_p, order = probs.sort(dim=-1, descending=True)
                before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly before each token
                sorted_p = sorted_p.masked_fill(before >= self.top_p, 0.0)
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
            cdf = probs.cumsum(dim=-1)
            uniforms = torch.empty(len(self.rows), dtype=torch.float32)
            for row, req in enumerate(self.rows):
                uniforms[row] = torch.rand((), generator=self.generators[req])
            target = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
            chosen = torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=logits.shape[-1] - 1)
        forced = torch.full_like(scores, -math.inf)
        forced.scatter_(-1, chosen.unsqueeze(-1), 0.0)
        return forced


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
        if options:
            raise ConfigError(
                f"omniopd.teacher.options has unknown keys {sorted(options)} for the transformers teacher: "
                "allowed device, dtype, batch_rows, max_tokens_factor"
            )
        self.sampler = sampler or LocalSampler.load(config.model, device=device, dtype=dtype)
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
            model=str(self.config.model),
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
