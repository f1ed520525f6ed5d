"""verl reward function for the prepared data: verified math answers and sandboxed code tests.

Use it from any verl config (the recipes do):
    reward.custom_reward_function.path: pkg://omniopd_verl.eval.reward
    reward.custom_reward_function.name: compute_score
It reads the rows `omniopd-verl data prepare` writes: ability "math" -> math-verify on
reward_model.ground_truth; ability "code" (style "code") -> the tests in ground_truth's JSON run in the
sandbox. verl's own `default_compute_score` dispatches on dataset names it knows ("openai/gsm8k", ...)
and raises for ours ("gsm8k", "math500", "dapo_math_17k"), which is why this exists. The score is 1.0
(right) or 0.0 (wrong); the same graders as `omniopd-verl eval`, so training reward and evaluation agree.
"""

from __future__ import annotations

import json

from omniopd_verl.eval import code_tasks, math_grader, sandbox


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """1.0 if `solution_str` is right for this row, else 0.0 (verl's custom_reward_function signature)."""
    if isinstance(ground_truth, str) and ground_truth.startswith("{") and '"test' in ground_truth:
        tests = json.loads(ground_truth)
        build = code_tasks.humaneval_program if "entry_point" in tests else code_tasks.mbpp_program
        result = sandbox.run_program(build(tests, solution_str), timeout_s=float(kwargs.get("code_timeout_s", 10)))
        return 1.0 if result.passed else 0.0
    return 1.0 if math_grader.grade(solution_str, str(ground_truth)) else 0.0
