"""`openai_completions` teacher: exact raw-prefix continuation from an OpenAI-compatible /v1/completions.

For open-weight teachers behind `vllm serve`, SGLang, TGI, llama.cpp's server, or this project's
`omniopd_verl.serving.openai_compat`. The teacher continues exactly the text
`context_prefix(teacher_context) + prompt_text + response_prefix`, where a teacher_context (privileged
text, e.g. a reference solution) becomes a plain block "<context>\\n\\n" in front of the prompt. One
call asks for all N samples (`n`) with the request's seed; nested prefixes of one response go out in
ascending order, so a server with prefix caching reuses them.

The wire client is the official `openai` SDK's AsyncOpenAI (one per event loop, keep-alive pool),
with its own retries off (max_retries=0) so that every retry is ours: counted, backed off with
jitter, honouring Retry-After, validated (see reliability.py). We measured litellm's
`atext_completion` on the same route at ~3x the client CPU per call (12 vs 4 ms on the project's
shared 2-core machine), which decides throughput when a local server answers in well under a second;
litellm adds nothing for a raw OpenAI-compatible endpoint (no provider translation to do).
Prices: `options.input_cost_per_token`/`output_cost_per_token`, or `options.price_model` (a model
name in litellm's price table); otherwise self-hosted calls cost 0.
Options: reliability.py's shared ones, plus `extra_body` (a dict merged into the request body) and
`price_model`.
"""

from __future__ import annotations

from typing import Any

from omniopd_verl.config import TeacherConfig
from omniopd_verl.errors import ConfigError
from omniopd_verl.teachers.base import TeacherCapabilities, TeacherRequest
from omniopd_verl.teachers.reliability import Answer, CallPlan, ReliableTeacher, Unit
from omniopd_verl.teachers.transformers_local import context_prefix


class OpenAICompletionsTeacher(ReliableTeacher):
    name = "openai_completions"
    capabilities = TeacherCapabilities(supports_n=True, supports_prefill=True, supports_seed=True, raw_completion=True)

    def __init__(self, config: TeacherConfig):
        if not config.model or not config.api_base:
            raise ConfigError(
                f"omniopd.teacher.model={config.model!r} / api_base={config.api_base!r} are invalid for the "
                "openai_completions teacher: allowed the served model name and the server's base URL "
                "(e.g. http://127.0.0.1:8000/v1)"
            )
        super().__init__(config, backend_options=("extra_body", "price_model"))
        self.extra_body = dict(self.options.get("extra_body") or {})
        self.price_model = self.options.get("price_model")
        self._check_budget_is_enforceable(self.price_model)

    def teacher_prompt(self, request: TeacherRequest) -> str:
        """Exactly the text the teacher continues."""
        return context_prefix(request.teacher_context) + request.prefix_text

    def _plan(self, request: TeacherRequest) -> CallPlan:
        prompt = self.teacher_prompt(request)
        return CallPlan(content=prompt, teacher_max_tokens=self.teacher_max_tokens(request), prompt_chars=len(prompt))

    def _client(self) -> Any:
        state = self._state()
        if state.client is None:
            import openai

            state.client = openai.AsyncOpenAI(
                base_url=self.config.api_base,
                api_key=self.api_key or "EMPTY",  # the client insists on a key; keyless servers ignore it
                max_retries=0,
                timeout=self.config.timeout_s,
            )
        return state.client

    async def _call(self, request: TeacherRequest, plan: CallPlan, unit: Unit) -> Answer:
        response = await self._client().completions.create(
            model=str(self.config.model),
            prompt=plan.content,
            n=unit.n,
            max_tokens=plan.teacher_max_tokens,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            seed=unit.seed,
            extra_body=self.extra_body or None,
        )
        texts = [choice.text for choice in (response.choices or [])]
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = self.price(self.price_model, prompt_tokens, completion_tokens) or 0.0
        return Answer(texts, prompt_tokens, completion_tokens, cost)

    async def aclose(self) -> None:
        try:
            state = self._state()
        except RuntimeError:  # no running loop
            state = None
        if state is not None and state.client is not None:
            await state.client.close()
            state.client = None
        await super().aclose()
