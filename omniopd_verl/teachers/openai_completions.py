"""`openai_completions` teacher: exact raw-prefix continuation from an OpenAI-compatible /v1/completions.

For open-weight teachers behind `vllm serve`, SGLang, TGI, llama.cpp's server, or this project's
`omniopd_verl.serving.openai_compat`. The teacher library renders the prefix (exactly
`context_prefix(teacher_context) + prompt_text + response_prefix`) and does everything else (cache,
retries, limits, budget, validation); this plugin is the raw call. One call asks for all N samples
(`n`) with the request's seed; nested prefixes of one response go out in ascending order, so a server
with prefix caching reuses them.

The wire client is the official `openai` SDK's AsyncOpenAI (one per event loop, keep-alive pool),
with its own retries off (max_retries=0) so that every retry is the library's: counted, backed off
with jitter, honouring Retry-After, validated. We measured litellm's `atext_completion` on the same
route at ~3x the client CPU per call (12 vs 4 ms on the project's shared 2-core machine), which
decides throughput when a local server answers in well under a second; litellm adds nothing for a
raw OpenAI-compatible endpoint (no provider translation to do).
Prices: the library's `options.input_cost_per_token`/`output_cost_per_token` or `options.price_model`
(a model name in litellm's price table); otherwise self-hosted calls cost 0.
Options (besides the library's): `extra_body` (a dict merged into the request body).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any

from omniopd_verl.config import TeacherConfig
from omniopd_verl.errors import ConfigError
from omniopd_verl.protocols import RawAnswer, RawRequest, RawSample, TeacherCapabilities
from omniopd_verl.teachers.secrets import read_api_key


class OpenAICompletionsTeacher:
    capabilities = TeacherCapabilities(
        supports_n=True, supports_prefill=True, supports_seed=True, raw_completion=True, max_tokens_factor=1.25
    )
    option_names = ("extra_body",)
    price_model = None  # self-hosted: free unless options.price_model or per-token prices say otherwise

    def __init__(self, config: TeacherConfig):
        if not config.model or not config.api_base:
            from omniopd_verl.teachers.identity import public_api_base  # never echo user:pass@ or ?key=

            base = public_api_base(config.api_base) if config.api_base else None
            raise ConfigError(
                f"omniopd.teacher.model={config.model!r} / api_base={base!r} are invalid for the "
                "openai_completions teacher: allowed the served model name and the server's base URL "
                "(e.g. http://127.0.0.1:8000/v1)"
            )
        self.config = config
        self.extra_body = dict(config.options.get("extra_body") or {})
        self.api_key = read_api_key(config)
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        # imported here, not at the first call: the ledger admits a call just before it is sent, and the SDK's
        # import (seconds on a loaded machine) between the two would shift a rate window's calls at the server
        import openai

        self._openai = openai

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = self._openai.AsyncOpenAI(
                base_url=self.config.api_base,
                api_key=self.api_key or "EMPTY",  # the client insists on a key; keyless servers ignore it
                max_retries=0,
                timeout=self.config.timeout_s,
            )
        return client

    async def warm(self) -> None:
        self._client()  # the SDK client (its SSL context, its pool) before the first admission, not after it

    async def sample_raw(self, requests: Sequence[RawRequest]) -> list[RawAnswer]:
        return [await self._one(r) for r in requests]  # the library sends one request per call

    async def _one(self, request: RawRequest) -> RawAnswer:
        response = await self._client().completions.create(
            model=str(self.config.model),
            prompt=request.prompt,
            n=request.n,
            max_tokens=request.teacher_max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            extra_body=self.extra_body or None,
        )
        usage = getattr(response, "usage", None)
        return RawAnswer(
            samples=[RawSample(c.text, c.finish_reason) for c in (response.choices or [])],
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        )

    async def aclose(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no running loop
            return
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.close()
