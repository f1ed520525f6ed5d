"""Is a model's math answer right? math-verify, plus the normalisation it lacks (unicode fractions).

`grade(response, gold)` parses the gold answer as LaTeX (wrapped in `\\boxed{}` so that answers such as
'\\left( 3, \\frac{\\pi}{2} \\right)' or '27.0' parse whole) and the response with math-verify's default
extraction (last `\\boxed{}` first, then LaTeX, then plain expressions), and compares them symbolically
and numerically: '\\frac12' == 0.5, 27 == '27.0'.

Timeouts: math-verify 0.9 guards parsing and comparison with `signal.alarm`, which works only in the
main thread. In the main thread we use it (`timeout_s`); from any other thread (verl's reward loop
calls reward functions from worker threads) the check runs in a small spawned process pool instead,
with the same timeout enforced by the future. A timed-out check counts as wrong and is counted in
`GRADER_STATS["timeouts"]`, never raised as a crash. Scripts that grade must have a `__main__` guard,
because the pool spawns fresh interpreters that re-import the main module.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from fractions import Fraction

GRADER_STATS = {"timeouts": 0, "errors": 0}
_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()
_VULGAR = re.compile(r"(\d*)\s*([\u00bc-\u00be\u2150-\u215e])")


def normalize_unicode(text: str) -> str:
    """'½' -> '\\frac{1}{2}', '1½' -> '\\frac{3}{2}', '−' -> '-' (LaTeX parsers know neither)."""

    def repl(match: re.Match) -> str:
        frac = Fraction(unicodedata.numeric(match.group(2))).limit_denominator(100)
        value = frac + (int(match.group(1)) if match.group(1) else 0)
        return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"

    return _VULGAR.sub(repl, text).replace("\u2212", "-")


def _gold_text(gold: str) -> str:
    gold = normalize_unicode(str(gold).strip())
    return gold if "\\boxed" in gold else f"\\boxed{{{gold}}}"


def _grade_here(response: str, gold: str, timeout_s: int | None) -> bool:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    gold_parsed = parse(_gold_text(gold), [LatexExtractionConfig()], parsing_timeout=timeout_s)
    if not gold_parsed:
        # gold that is not LaTeX (e.g. a plain word or number): let math-verify try expressions too
        gold_parsed = parse(str(gold), [LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=timeout_s)
    pred_parsed = parse(normalize_unicode(response), parsing_timeout=timeout_s)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s))


def _get_pool() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            import multiprocessing

            _pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def grade(response: str, gold: str, *, timeout_s: int = 5) -> bool:
    """True when the final answer in `response` equals `gold` (see the module docstring)."""
    if threading.current_thread() is threading.main_thread():
        try:
            return _grade_here(response, gold, timeout_s)
        except Exception as exc:  # math-verify raises its TimeoutException (and rarely sympy errors)
            GRADER_STATS["timeouts" if "Timeout" in type(exc).__name__ else "errors"] += 1
            return False
    future = _get_pool().submit(_grade_here, response, gold, timeout_s)
    try:
        return future.result(timeout=timeout_s * 3 + 30)  # parse + verify each have timeout_s inside
    except FutureTimeout:
        future.cancel()
        GRADER_STATS["timeouts"] += 1
        return False
    except Exception:
        GRADER_STATS["errors"] += 1
        return False


def shutdown_pool() -> None:
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.shutdown(cancel_futures=True)
            _pool = None
