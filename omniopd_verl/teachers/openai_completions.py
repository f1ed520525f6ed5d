"""`openai_completions` teacher: exact raw-prefix continuation from an OpenAI-compatible /v1/completions.

For open-weight teachers behind `vllm serve`, SGLang, TGI, llama.cpp's server, or this project's
`omniopd_verl.serving.openai_compat`. The teacher continues exactly the text
`context_prefix(teacher_context) + prompt_text + response_prefix`, where a teacher_context (privileged
text, e.g. a reference solution) becomes a plain block "<context>\\n\\n" in front of the prompt. One
call asks for all N samples (`n`) with the request's seed; nested prefixes of one response go out in
ascending order, so a server with prefix caching reuses them.

Calls go through litellm's `atext_completion` (model "text-completion-openai/<config.model>",
api_base = config.api_base), with litellm's own retries off (max_retries=0) so that every retry is
ours: counted, backed off with jitter, honouring Retry-After, and validated (see reliability.py).
Options: see reliability.py (shared), plus `extra_body` (a dict merged into the request body).
"""

from __future__ import annotations

from typing import Any

from omniopd_verl.config import TeacherConfig
from omniopd_verl.errors import ConfigError
from omniopd_verl.teachers.base import TeacherCapabilities, TeacherRequest
from omniopd_verl.teachers.reliability import Answer, CallPlan, ReliableTeacher, Unit, import_litellm
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
        super().__init__(config, backend_options=("extra_body",))
        self.extra_body = dict(self.options.get("extra_body") or {})
        self.litellm_model = f"text-completion-openai/{config.model}"
        import_litellm()  # here, not in the first call: its ~8 s import must not count against timeout_s
        self._check_budget_is_enforceable(str(config.model))

    def teacher_prompt(self, request: TeacherRequest) -> str:
        """Exactly the text the teacher continues."""
        return context_prefix(request.teacher_context) + request.prefix_text

    def _plan(self, request: TeacherRequest) -> CallPlan:
        prompt = self.teacher_prompt(request)
        return CallPlan(content=prompt, max_tokens=self.teacher_max_tokens(request), prompt_chars=len(prompt))

    async def _call(self, request: TeacherRequest, plan: CallPlan, unit: Unit) -> Answer:
        litellm = import_litellm()
        kwargs: dict[str, Any] = dict(
            model=self.litellm_model,
            api_base=self.config.api_base,
            api_key=self.api_key or "EMPTY",  # the OpenAI client insists on a key; keyless servers ignore it
            prompt=plan.content,
            n=unit.n,
            max_tokens=plan.max_tokens,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            seed=unit.seed,
            timeout=self.config.timeout_s,
            max_retries=0,
        )
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        response = await litellm.atext_completion(**kwargs)
        texts = [choice.text for choice in (response.choices or [])]
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = self.price(str(self.config.model), prompt_tokens, completion_tokens) or 0.0
        return Answer(texts, prompt_tokens, completion_tokens, cost)
