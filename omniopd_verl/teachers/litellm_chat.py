"""`litellm` teacher: chat APIs (Anthropic, Gemini, OpenAI, Bedrock, ...) through litellm.

A chat teacher cannot continue raw text, so it continues a partial assistant turn (rendered by the
teacher library, `omniopd_verl.teachers.prompts`):
- "prefill" (Anthropic, and any provider you set `continuation: prefill` for): the partial answer
  y_<t is sent as a final assistant message and the model writes what follows;
- "instruct" (everyone else, [decision] in ALGORITHM.md): a final user message shows the partial answer
  and asks the model to continue it verbatim from where it stops, writing only the continuation.
This plugin declares which (`capabilities.supports_prefill`) and makes the raw call.

top_p is sent only when below 1.0 (1.0 is every API's default, and recent Claude models reject
temperature and top_p together). Reasoning/thinking is off: nothing enables Anthropic thinking, and
Gemini/other reasoning models get `reasoning_effort="disable"` (option `reasoning_effort`, null to send
nothing). Providers whose litellm parameters include `n` get one call for all N samples; the library
sends the others N single-sample calls (seed+j). Calls go through litellm's `acompletion` with its own
retries off (max_retries=0): retries, backoff, Retry-After, timeouts, validation, rate limits, caching
and cost are the library's; prices come from litellm's local price table for `config.model`
(`LITELLM_LOCAL_MODEL_COST_MAP=True`, no download).

The key: `$api_key_env` when set; otherwise, for the provider's own endpoint (no api_base), litellm
reads the provider's usual variable (OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY, ...), which
`key_env` names in error messages. With a custom `api_base` and no `api_key_env` no key is sent (the
placeholder NO_KEY): a provider's key must never go to a host the user did not name it for.

Options (besides the library's): continuation ("auto" | "prefill" | "instruct"), supports_n (null =
ask litellm), reasoning_effort ("auto"), extra_kwargs (dict passed to acompletion).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omniopd_verl.config import TeacherConfig
from omniopd_verl.errors import ConfigError
from omniopd_verl.protocols import STOP_REASONS, RawAnswer, RawRequest, RawSample, TeacherCapabilities
from omniopd_verl.teachers.reliability import import_litellm
from omniopd_verl.teachers.secrets import PROVIDER_DEFAULT_ENV, read_api_key

NO_KEY = "EMPTY"  # what keyless servers (vllm serve, this project's) accept; not anyone's key
PREFILL_PROVIDERS = ("anthropic", "bedrock", "vertex_ai")  # vertex_ai: Claude on Vertex; Gemini uses instruct
CONTINUATIONS = ("auto", "prefill", "instruct")


class LiteLLMTeacher:
    option_names = ("continuation", "supports_n", "reasoning_effort", "extra_kwargs")

    def __init__(self, config: TeacherConfig):
        if not config.model:
            raise ConfigError(
                "omniopd.teacher.model=None is invalid for the litellm teacher: allowed a litellm model string "
                "such as 'anthropic/claude-haiku-4-5' or 'gemini/gemini-2.5-flash'"
            )
        self.config = config
        options = config.options
        litellm = import_litellm()
        self.model = config.model
        self.price_model = config.model
        self.api_key = read_api_key(config)
        try:
            _, self.provider, _, _ = litellm.get_llm_provider(model=self.model, api_base=config.api_base)
        except Exception as exc:
            raise ConfigError(f"omniopd.teacher.model={self.model!r} is not a model litellm knows: {exc}") from None
        # litellm falls back to the provider's variable when no key is passed: only for the provider's own host
        own_host = not config.api_base
        self.key_env = PROVIDER_DEFAULT_ENV.get(self.provider) if own_host and not config.api_key_env else None
        if self.api_key is None and not own_host:
            self.api_key = NO_KEY
        continuation = options.get("continuation", "auto")
        if continuation not in CONTINUATIONS:
            raise ConfigError(
                f"omniopd.teacher.options.continuation={continuation!r} is invalid: allowed one of {list(CONTINUATIONS)}"
            )
        if continuation == "auto":
            is_claude = "claude" in self.model or self.provider == "anthropic"
            continuation = "prefill" if self.provider in PREFILL_PROVIDERS and is_claude else "instruct"
        self.continuation = continuation
        try:
            supported = litellm.get_supported_openai_params(model=self.model, custom_llm_provider=self.provider) or []
        except Exception:
            supported = []
        supports_n = options.get("supports_n")
        self.supports_seed = "seed" in supported
        reasoning = options.get("reasoning_effort", "auto")
        if reasoning == "auto":
            reasoning = "disable" if self.provider in ("gemini", "vertex_ai") and "gemini" in self.model else None
        self.reasoning_effort = reasoning
        self.extra_kwargs = dict(options.get("extra_kwargs") or {})
        self.capabilities = TeacherCapabilities(
            supports_n=bool("n" in supported if supports_n is None else supports_n),
            supports_prefill=self.continuation == "prefill",
            supports_seed=self.supports_seed,
            raw_completion=False,
            max_tokens_factor=1.25,
        )

    async def sample_raw(self, requests: Sequence[RawRequest]) -> list[RawAnswer]:
        return [await self._one(r) for r in requests]  # the library sends one request per call

    async def _one(self, request: RawRequest) -> RawAnswer:
        litellm = import_litellm()
        kwargs: dict[str, Any] = dict(
            model=self.model,
            messages=[dict(m) for m in request.messages or ()],
            max_tokens=request.teacher_max_tokens,
            temperature=request.temperature,
            timeout=request.timeout_s,
            max_retries=0,
            drop_params=True,
        )
        if request.top_p < 1.0:  # 1.0 is every API's default; recent Claude models refuse both knobs at once
            kwargs["top_p"] = request.top_p
        if self.config.api_base:
            kwargs["api_base"] = self.config.api_base
        if self.api_key:
            kwargs["api_key"] = self.api_key
        if request.n > 1:
            kwargs["n"] = request.n
        if self.supports_seed:
            kwargs["seed"] = request.seed
        if self.reasoning_effort:
            kwargs["reasoning_effort"] = self.reasoning_effort
        kwargs.update(self.extra_kwargs)
        response = await litellm.acompletion(**kwargs)
        usage = getattr(response, "usage", None)
        return RawAnswer(
            samples=[_sample(c) for c in response.choices or []],
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        )


def _sample(choice: Any) -> RawSample:
    """litellm turns an empty Anthropic text block into content None: with a stop, that is the empty answer."""
    text = getattr(choice.message, "content", None)
    finish = getattr(choice, "finish_reason", None)
    if text is None and finish in STOP_REASONS:
        text = ""
    return RawSample(text, finish)
