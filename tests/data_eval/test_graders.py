"""The math grader on hand-picked answer pairs, and pass@k against a brute-force count."""

from __future__ import annotations

import itertools
import threading

import pytest

from omniopd_verl.data.answers import gsm8k_answer, last_boxed, strip_dollars
from omniopd_verl.eval.math_grader import grade, normalize_unicode
from omniopd_verl.eval.metrics import pass_at_k, summarize

RIGHT = [
    ("0.5", "So the probability is ½."),  # unicode vulgar fraction vs decimal gold
    ("\\frac{1}{2}", "The answer is \\boxed{0.5}"),
    ("0.5", "Thus \\boxed{\\frac12}."),
    ("27.0", "The answer is \\boxed{27}"),  # AMC gold floats
    ("27.0", "so they meet after 27 miles"),
    ("27", "\\boxed{27.0}"),
    ("18", "She makes 9 * 2 = 18 dollars.\n#### 18"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "The polar form is \\boxed{(3, \\frac{\\pi}{2})}"),
    ("\\frac{3}{2}", "\\boxed{1½}"),
    ("204", "Working it out... \\boxed{\\text{204}}"),
]
WRONG = [
    ("18", "The answer is \\boxed{19}"),
    ("0.5", "\\boxed{\\frac{1}{3}}"),
    ("27.0", "\\boxed{27.5}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi)}"),
    ("204", "I could not solve it."),
    ("204", ""),
]


@pytest.mark.parametrize(("gold", "response"), RIGHT)
def test_grader_accepts_equivalent_answers(gold, response):
    assert grade(response, gold) is True


@pytest.mark.parametrize(("gold", "response"), WRONG)
def test_grader_rejects_wrong_answers(gold, response):
    assert grade(response, gold) is False


def test_grader_from_a_worker_thread_uses_the_process_pool():
    # math-verify's signal-based timeout only works in the main thread; off it, grading goes to a pool
    from omniopd_verl.eval.math_grader import shutdown_pool

    results = {}

    def work():
        results["right"] = grade("\\boxed{\\frac{1}{2}}", "0.5")
        results["wrong"] = grade("\\boxed{3}", "0.5")

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=120)
    shutdown_pool()
    assert results == {"right": True, "wrong": False}


def test_unicode_fraction_normalisation():
    assert normalize_unicode("½") == "\\frac{1}{2}"
    assert normalize_unicode("2¾ cups") == "\\frac{11}{4} cups"
    assert normalize_unicode("−3") == "-3"


def test_reference_answer_extraction():
    assert gsm8k_answer("blah <<2*3=6>>6\n#### 1,234") == "1234"
    with pytest.raises(ValueError, match="####"):
        gsm8k_answer("no final line")
    assert last_boxed("so $\\boxed{\\frac{1}{2}}$ and later \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.") == (
        "\\left( 3, \\frac{\\pi}{2} \\right)"
    )
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("\\boxed{unbalanced") is None
    assert last_boxed("nothing here") is None
    assert strip_dollars("$69$,$84$") == "69,84"


def _brute_pass_at_k(n, c, k):
    """Fraction of k-subsets of n samples (c correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 1, 5), (4, 4, 2), (7, 3, 7)])
def test_pass_at_k_matches_brute_force(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k))


def test_summarize_reports_pass_and_avg():
    correct = [[True, False, False, False], [True, True, True, True], [False] * 4]
    m = summarize(correct, ks=(1, 2))
    assert m["avg@4"] == pytest.approx((0.25 + 1 + 0) / 3)
    assert m["pass@1"] == pytest.approx(m["avg@4"])
    assert m["pass@2"] == pytest.approx((_brute_pass_at_k(4, 1, 2) + 1 + 0) / 3)
    assert m["n_problems"] == 3
    with pytest.raises(ValueError, match="k=5"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="same number of samples"):
        summarize([[True], [True, False]])


def test_verl_reward_function_loads_by_pkg_path_and_scores_math_and_code(benchmarks_dir):
    """The recipes' reward.custom_reward_function, loaded the way verl loads it."""
    from verl.utils.import_utils import load_extern_object

    from omniopd_verl.data import benchmarks
    from omniopd_verl.data.verl_format import ground_truth

    compute_score = load_extern_object("pkg://omniopd_verl.eval.reward", "compute_score")
    assert compute_score("gsm8k", "so \\boxed{18}", "18", {}) == 1.0
    assert compute_score("amc23", "\\boxed{27}", "27.0", {}) == 1.0
    assert compute_score("gsm8k", "\\boxed{17}", "18", {}) == 0.0
    he = benchmarks.load("humaneval", benchmarks_dir)[0]
    truth, style = ground_truth(he, "code")
    assert style == "code"
    assert compute_score("humaneval", he.extra["canonical_solution"], truth, {}) == 1.0
    assert compute_score("humaneval", "    return 42\n", truth, {}) == 0.0
    mb = benchmarks.load("mbpp_sanitized", benchmarks_dir)[0]
    mb_truth, _ = ground_truth(mb, "code")
    assert compute_score("mbpp_sanitized", "```python\n" + mb.extra["code"] + "\n```", mb_truth, {}) == 1.0
