"""Turn a model's code answer plus a HumanEval/MBPP problem into a `sandbox.Program`: code, then tests.

HumanEval: if the answer defines the entry-point function, the program is the problem's prompt
(imports, helper definitions, the docstring-only stub) followed by the answer, whose definition
replaces the stub; otherwise the answer is taken as the body that continues the prompt (base-model
style). The tests are the problem's `check(candidate)`, called on the entry point wrapped so that its
results must be plain values (`harness`). MBPP: code = test setup code + the answer; tests = the
`assert` lines. The sandbox runs the tests after the code, type-strict, and decides the pass itself.
"""

from __future__ import annotations

import re

from omniopd_verl.eval.harness import CHECKED_CALL
from omniopd_verl.eval.sandbox import Program

_FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(completion: str) -> str:
    """The first ```python block (else the first fenced block, else the whole text)."""
    blocks = _FENCE.findall(completion)
    for lang, body in blocks:
        if lang.lower() in ("python", "py", "python3"):
            return body
    return blocks[0][1] if blocks else completion


def humaneval_program(extra: dict, completion: str) -> Program:
    code = extract_code(completion)
    entry = extra["entry_point"]
    if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
        body = extra["prompt"] + "\n    pass\n\n" + code
    else:
        body = extra["prompt"] + code
    return Program(body + "\n", f"{extra['test']}\n\ncheck({CHECKED_CALL}({entry}))\n")


def mbpp_program(extra: dict, completion: str) -> Program:
    code = extract_code(completion)
    setup = extra.get("test_setup_code") or ""
    return Program(f"{setup}\n{code}\n", "\n".join(extra["test_list"]) + "\n")


PROGRAM_BUILDERS = {"humaneval": humaneval_program, "mbpp": mbpp_program, "mbpp_sanitized": mbpp_program}
