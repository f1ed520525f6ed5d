"""What a teacher sees: rendering a TeacherRequest for a raw-completion or a chat teacher.

Shared library code (every teacher gets it from the teacher library, no plugin renders prompts):
- raw completion: exactly `context_prefix(teacher_context) + prompt_text + response_prefix`, where a
  teacher_context (privileged text, e.g. a reference solution) is a plain block "<context>\\n\\n" in
  front of the prompt. A plugin with a chat template (`render_chat`) given the original chat messages
  gets the context as a system message instead (CONTEXT_SYSTEM_TEMPLATE), the chat re-rendered, and
  the partial answer appended.
- chat: the conversation is `prompt_messages` (or one user message with `prompt_text`), a
  teacher_context becomes a system message (merged with an existing one), and the partial answer
  y_<t is continued either as a prefill (a final assistant message; trailing whitespace is cut, since
  Anthropic rejects it, and removed again from the start of each continuation) or, for APIs that
  cannot prefill ([decision] in ALGORITHM.md), as a final user message asking to continue verbatim
  (CONTINUE_TEMPLATE).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from omniopd_verl.protocols import TeacherRequest

CONTEXT_SYSTEM_TEMPLATE = (
    "Privileged information for you only (the user does not see it); use it to answer well:\n{context}"
)
RAW_CONTEXT_TEMPLATE = "{context}\n\n"
CONTINUE_TEMPLATE = (
    "Below is the beginning of your answer to the conversation above, cut off mid-way.\n"
    "<partial_answer>\n{prefix}\n</partial_answer>\n"
    "Continue it verbatim from exactly where it stops. Write only the continuation: do not repeat any of "
    "the partial answer, do not add any preamble, commentary or quotation marks."
)


def context_prefix(teacher_context: str | None) -> str:
    """The plain-text block prepended to a raw prefix when there is a teacher_context."""
    return RAW_CONTEXT_TEMPLATE.format(context=teacher_context) if teacher_context else ""


def raw_prompt(request: TeacherRequest, render_chat: Callable[[Sequence[dict[str, Any]]], str] | None = None) -> str:
    """Exactly the text a raw-completion teacher continues (see the module docstring)."""
    if request.teacher_context and request.prompt_messages and render_chat is not None:
        messages = [{"role": "system", "content": CONTEXT_SYSTEM_TEMPLATE.format(context=request.teacher_context)}]
        messages += [dict(m) for m in request.prompt_messages]
        return render_chat(messages) + request.response_prefix
    return context_prefix(request.teacher_context) + request.prefix_text


def chat_messages(request: TeacherRequest, prefill: bool) -> tuple[list[dict[str, Any]], str]:
    """(the messages a chat teacher is sent, the whitespace cut from a prefill that continuations must not repeat)."""
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
        if prefill:
            kept = prefix.rstrip()
            cut = prefix[len(kept) :]
            messages.append({"role": "assistant", "content": kept})
        else:
            messages.append({"role": "user", "content": CONTINUE_TEMPLATE.format(prefix=prefix)})
    return messages, cut


def strip_cut(text: Any, cut: str) -> Any:
    """Undo the prefill whitespace cut: the continuation should follow the original prefix."""
    if not isinstance(text, str) or not cut:
        return text
    return text[len(cut) :] if text.startswith(cut) else text.lstrip()
