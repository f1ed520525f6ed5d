"""`vllm` teacher: an in-process vLLM engine (GPU), raw-prefix continuation like `openai_completions`.

vLLM is an optional extra (`pip install omniopd-verl[vllm]`, GPU only); it is imported when the teacher
is built, and its absence is a clear error. The teacher continues exactly
`context_prefix(teacher_context) + prompt_text + response_prefix` (as the other raw-completion
teachers), all requests of a `sample` call in one `LLM.generate` call with one `SamplingParams`
per request (n, max_tokens, temperature, top_p, seed) — vLLM batches them and reuses nested
prefixes with prefix caching. The cache and accounting are shared with the other backends.

Options: passed to `vllm.LLM(model=config.model, **options)` (e.g. gpu_memory_utilization,
tensor_parallel_size, dtype, enable_prefix_caching), except `max_tokens_factor` (1.0).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import Any

from omniopd_verl.config import TeacherConfig
from omniopd_verl.errors import ConfigError, PluginError
from omniopd_verl.teachers.accounting import TeacherMeter
from omniopd_verl.teachers.base import TeacherCapabilities, TeacherRequest, TeacherResult
from omniopd_verl.teachers.cache import TeacherCache, cache_key
from omniopd_verl.teachers.transformers_local import context_prefix


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise PluginError(
            "the vllm teacher needs vLLM, which is not installed (it is a GPU-only optional extra): "
            "pip install 'omniopd-verl[vllm]' on a CUDA machine, or use the openai_completions teacher against "
            f"a `vllm serve` endpoint, or the transformers teacher on CPU ({exc})"
        ) from None
    return vllm


class VLLMTeacher:
    name = "vllm"
    capabilities = TeacherCapabilities(supports_n=True, supports_prefill=True, supports_seed=True, raw_completion=True)

    def __init__(self, config: TeacherConfig, *, vllm_module: Any = None):
        if not config.model:
            raise ConfigError(
                "omniopd.teacher.model=None is invalid for the vllm teacher: allowed a model path or name"
            )
        self.config = config
        options = dict(config.options)
        self.max_tokens_factor = float(options.pop("max_tokens_factor", 1.0))
        self.vllm = vllm_module or _import_vllm()
        self.llm = self.vllm.LLM(model=config.model, **options)
        self.meter = TeacherMeter(config.max_cost_usd)
        self.cache = TeacherCache(config.cache_path) if config.cache_path else None
        self._lock = asyncio.Lock()

    def teacher_prompt(self, request: TeacherRequest) -> str:
        return context_prefix(request.teacher_context) + request.prefix_text

    def sampling_params(self, request: TeacherRequest) -> Any:
        return self.vllm.SamplingParams(
            n=request.n,
            max_tokens=max(1, math.ceil(request.student_tokens * self.max_tokens_factor)),
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            seed=request.seed,
        )

    def _key(self, request: TeacherRequest, prompt: str, params: Any) -> str:
        return cache_key(
            backend=self.name,
            model=str(self.config.model),
            prefix=prompt,
            n=request.n,
            teacher_max_tokens=params.max_tokens,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            seed=request.seed,
        )

    async def sample(self, requests: Sequence[TeacherRequest]) -> list[TeacherResult]:
        results: list[TeacherResult | None] = [None] * len(requests)
        todo = []
        for i, request in enumerate(requests):
            prompt, params = self.teacher_prompt(request), self.sampling_params(request)
            key = self._key(request, prompt, params)
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                self.meter.cache_hit()
                results[i] = TeacherResult(request.request_id, hit["texts"], cached=True)
            else:
                todo.append((i, request, prompt, params, key))
        if todo:
            async with self._lock:  # one generate at a time; vLLM batches inside it
                start = time.perf_counter()
                outputs = await asyncio.to_thread(
                    self.llm.generate, [t[2] for t in todo], [t[3] for t in todo], use_tqdm=False
                )
                seconds = time.perf_counter() - start
            for (i, request, _, _, key), output in zip(todo, outputs, strict=True):
                texts = [c.text for c in output.outputs]
                if len(texts) != request.n:  # vLLM always returns n; a mismatch is a bug, not a disagreement
                    raise RuntimeError(
                        f"vLLM returned {len(texts)} samples for {request.request_id}, asked {request.n}"
                    )
                prompt_tokens = len(output.prompt_token_ids or [])
                completion_tokens = sum(len(c.token_ids) for c in output.outputs)
                share = seconds / len(todo)
                self.meter.record_call(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, seconds=share)
                if self.cache is not None:
                    self.cache.put(key, {"texts": texts})
                results[i] = TeacherResult(
                    request.request_id,
                    texts,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    seconds=share,
                )
        return results  # type: ignore[return-value]

    def metrics(self) -> dict[str, float]:
        return self.meter.snapshot()

    async def aclose(self) -> None:
        if self.cache is not None:
            self.cache.close()
