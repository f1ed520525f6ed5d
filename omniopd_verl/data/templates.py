"""Prompt templates: how a benchmark question becomes the user turn of a chat prompt.

A template is a string containing `{question}` (replaced literally, so `\\boxed{}` needs no escaping). Math templates ask for the final answer in
`\\boxed{}` because the graders (math-verify) look there first. Code templates ask for one fenced
Python block, which `omniopd_verl.eval.code_tasks.extract_code` takes out again.
"""

from __future__ import annotations

from omniopd_verl.errors import ConfigError

TEMPLATES: dict[str, str] = {
    # the DeepSeek-R1 / Qwen-Math style instruction, the default for math
    "boxed": "{question}\n\nPlease reason step by step, and put your final answer within \\boxed{}.",
    "think_boxed": "{question}\n\nLet's think step by step and output the final answer within \\boxed{}.",
    # the question only (e.g. for a model fine-tuned with its own system prompt)
    "plain": "{question}",
    # code: the model must answer with one ```python block
    "code": ("{question}\n\nWrite your solution as a single self-contained Python code block (```python ... ```)."),
}

DEFAULT_TEMPLATE = {"math": "boxed", "code": "code"}


def render(template: str, question: str) -> str:
    """Fill a named template (or a literal format string containing `{question}`) with the question."""
    fmt = TEMPLATES.get(template, template)
    if "{question}" not in fmt:
        raise ConfigError(
            f"prompt template {template!r} is neither a known name {sorted(TEMPLATES)} "
            "nor a format string containing '{question}'"
        )
    return fmt.replace("{question}", question)  # not str.format: templates contain literal braces
