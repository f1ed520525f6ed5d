"""`litellm` teacher: chat APIs (Anthropic, Gemini, OpenAI, Bedrock, ...) through litellm.

A chat teacher cannot continue raw text, so it continues a partial assistant turn:
- "prefill" (Anthropic, and any provider you set `continuation: prefill` for): the partial answer
  y_<t is sent as a final assistant message and the model writes what follows. Anthropic rejects a
  prefill ending in whitespace, so trailing whitespace is cut from the prefill and removed again from
  the start of each continuation.
- "instruct" (everyone else, [decision] in ALGORITHM.md): a final user message shows the partial answer
  and asks the model to continue it verbatim from where it stops, writing only the continuation
  (CONTINUE_TEMPLATE below).
The conversation is `request.prompt_messages` when the engine has them, otherwise one user message
with `request.prompt_text`. A `teacher_context` (privileged text for the teacher only) becomes a system
message (CONTEXT_SYSTEM_TEMPLATE), merged with an existing system message.

top_p is sent only when below 1.0 (1.0 is every API's default, and recent Claude models reject
temperature and top_p together). Reasoning/thinking is off: nothing enables Anthropic thinking, and Gemini/other reasoning models get
`reasoning_effort="disable"` (option `reasoning_effort`, null to send nothing). Providers whose litellm
parameters include `n` get one call for all N samples; the others get N parallel calls (seed+j).
Calls go through litellm's `acompletion` with its own retries off (max_retries=0): retries, backoff,
Retry-After, timeouts, validation, rate limits, caching and cost are reliability.py's; prices come
from litellm's local price table (`LITELLM_LOCAL_MODEL_COST_MAP=True`, no download).

Options (`config.options`, besides reliability.py's): continuation ("auto" | "prefill" | "instruct"),
supports_n (null = ask litellm), reasoning_effort ("auto"), extra_kwargs (dict passed to acompletion).
"""

from __future__ import annotations

from typing import Any

from omniopd_verl.config import TeacherConfig
from omniopd_verl.errors import ConfigError
from omniopd_verl.teachers.base import TeacherCapabilities, TeacherRequest
from omniopd_verl.teachers.reliability import Answer, CallPlan, ReliableTeacher, Unit, import_litellm
from omniopd_verl.teachers.transformers_local import CONTEXT_SYSTEM_TEMPLATE

CONTINUE_TEMPLATE = (
    "Below is the beginning of your answer to the conversation above, cut off mid-way.\n"
    "<partial_answer>\n{prefix}\n</partial_answer>\n"
    "Continue it verbatim from exactly where it stops. Write only the continuation: do not repeat any of "
    "the partial answer, do not add any preamble, commentary or quotation marks."
)
PREFILL_PROVIDERS = ("anthropic", "bedrock", "vertex_ai")  # vertex_ai: Claude on Vertex; Gemini uses instruct
CONTINUATIONS = ("auto", "prefill", "instruct")


class LiteLLMTeacher(ReliableTeacher):
    name = "litellm"

    def __init__(self, config: TeacherConfig):
        if not config.model:
            raise ConfigError(
                "omniopd.teacher.model=None is invalid for the litellm teacher: allowed a litellm model string "
                "such as 'anthropic/claude-haiku-4-5' or 'gemini/gemini-2.5-flash'"
            )
        super().__init__(config, backend_options=("continuation", "supports_n", "reasoning_effort", "extra_kwargs"))
        litellm = import_litellm()
        self.model = config.model
        try:
            _, self.provider, _, _ = litellm.get_llm_provider(model=self.model, api_base=config.api_base)
        except Exception as exc:
            raise ConfigError(f"omniopd.teacher.model={self.model!r} is not a model litellm knows: {exc}") from None
        continuation = self.options.get("continuation", "auto")
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
        supports_n = self.options.get("supports_n")
        self.supports_seed = "seed" in supported
        reasoning = self.options.get("reasoning_effort", "auto")
        if reasoning == "auto":
            reasoning = "disable" if self.provider in ("gemini", "vertex_ai") and "gemini" in self.model else None
        self.reasoning_effort = reasoning
        self.extra_kwargs = dict(self.options.get("extra_kwargs") or {})
        self.capabilities = TeacherCapabilities(
            supports_n=bool("n" in supported if supports_n is None else supports_n),
            supports_prefill=self.continuation == "prefill",
            supports_seed=self.supports_seed,
            raw_completion=False,
        )
        self._check_budget_is_enforceable(self.model)

    def messages(self, request: TeacherRequest) -> tuple[list[dict[str, Any]], str]:
        """(the messages sent, the whitespace cut from a prefill that continuations must not repeat)."""
        if request.prompt_messages:
            messages = [dict(m) for m in request.prompt_messages]
        else:
            messages = [{"role": "user", "content": request.prompt_text}]
        if request.teacher_context:
            context = CONTEXT_SYSTEM_TEMPLATE.format(context=request.teacher_context)
            if messages and messages[0]["role"] == "system":
                messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{context}"}
            else:
                messages.insert(0, {"role": "system", "content": context})
        prefix = request.response_prefix
        cut = ""
        if prefix.strip():
            if self.continuation == "prefill":
                kept = prefix.rstrip()
                cut = prefix[len(kept) :]
                messages.append({"role": "assistant", "content": kept})
            else:
                messages.append({"role": "user", "content": CONTINUE_TEMPLATE.format(prefix=prefix)})
        return messages, cut

    def _plan(self, request: TeacherRequest) -> CallPlan:
        messages, cut = self.messages(request)
        content = {"messages": messages, "continuation": self.continuation}
        chars = sum(len(str(m["content"])) for m in messages)
        return CallPlan(
            content=content, teacher_max_tokens=self.teacher_max_tokens(request), prompt_chars=chars, extra={"cut": cut}
        )

    async def _call(self, request: TeacherRequest, plan: CallPlan, unit: Unit) -> Answer:
        litellm = import_litellm()
        kwargs: dict[str, Any] = dict(
            model=self.model,
            messages=plan.content["messages"],
            max_tokens=plan.teacher_max_tokens,
            temperature=self.config.temperature,
            timeout=self.config.timeout_s,
            max_retries=0,
            drop_params=True,
        )
        if self.config.top_p < 1.0:  # 1.0 is every API's default; recent Claude models refuse both knobs at once
            kwargs["top_p"] = self.config.top_p
        if self.config.api_base:
            kwargs["api_base"] = self.config.api_base
        if self.api_key:
            kwargs["api_key"] = self.api_key
        if unit.n > 1:
            kwargs["n"] = unit.n
        if self.supports_seed:
            kwargs["seed"] = unit.seed
        if self.reasoning_effort:
            kwargs["reasoning_effort"] = self.reasoning_effort
        kwargs.update(self.extra_kwargs)
        response = await litellm.acompletion(**kwargs)
        texts = [
            self._strip_cut(getattr(c.message, "content", None), plan.extra["cut"]) for c in response.choices or []
        ]
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = self.price(self.model, prompt_tokens, completion_tokens) or 0.0
        return Answer(texts, prompt_tokens, completion_tokens, cost)

    @staticmethod
    def _strip_cut(text: Any, cut: str) -> Any:
        """Undo the prefill whitespace cut: the continuation should follow the original prefix."""
        if not isinstance(text, str) or not cut:
            return text
        return text[len(cut) :] if text.startswith(cut) else text.lstrip()
