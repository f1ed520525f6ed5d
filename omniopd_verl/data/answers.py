"""Reference-answer extraction from benchmark solutions: GSM8K's `#### 18`, MATH's last `\\boxed{...}`.

These run at data-preparation time on the *gold* solutions; the model's answers are graded by
`omniopd_verl.eval.math_grader` (math-verify), which does its own extraction.
"""

from __future__ import annotations

import re

_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def gsm8k_answer(solution: str) -> str:
    """The final answer after `####` in a GSM8K solution, thousands separators removed ('1,000' -> '1000')."""
    match = _GSM8K_ANSWER.search(solution.strip())
    if match is None:
        raise ValueError(f"GSM8K solution has no '#### <answer>' line: {solution[-120:]!r}")
    return match.group(1).replace(",", "").strip()


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, braces balanced; None if absent.

    A regex cannot match nested braces (`\\boxed{\\frac{1}{2}}`), so this walks the string.
    """
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        # `\boxed 5` (no braces) occurs in a few MATH solutions
        bare = list(re.finditer(r"\\boxed ([^\s$]+)", text))
        return bare[-1].group(1) if bare else None
    begin = starts[-1].end()
    depth = 1
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i].strip()
    return None  # unbalanced: treat as absent rather than guess


def boxed_answer(solution: str, *, source: str) -> str:
    """The last boxed answer of a MATH-style solution; a clear error when the solution has none."""
    answer = last_boxed(solution)
    if answer is None or not answer:
        raise ValueError(f"{source}: solution has no \\boxed{{...}} answer: {solution[-160:]!r}")
    return answer


def strip_dollars(answer: str) -> str:
    """'$2^{1009}$' -> '2^{1009}', '$69$,$84$' -> '69,84' (OlympiadBench wraps final answers in math delimiters)."""
    return answer.replace("$", "").strip()
