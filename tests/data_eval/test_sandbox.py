"""The code sandbox: limits kill runaway programs without losing the other results; real HumanEval/MBPP
solutions pass their tests and wrong ones fail."""

from __future__ import annotations

import time

from omniopd_verl.data import benchmarks
from omniopd_verl.eval.code_tasks import extract_code, humaneval_program, mbpp_program
from omniopd_verl.eval.runner import grade_responses
from omniopd_verl.eval.sandbox import FAILED, MEMORY, PASSED, TIMEOUT, run_programs


def test_sandbox_kills_infinite_loop_and_memory_bomb_and_reports_the_rest():
    programs = [
        "assert sum(range(10)) == 45\n",
        "while True:\n    pass\n",  # infinite loop -> wall/CPU timeout
        "x = bytearray(8 * 1024 ** 3)\n",  # memory bomb: 8 GiB against a 512 MiB address-space limit
        "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'while True: pass'])\nwhile True: pass\n",
        "assert 1 + 1 == 3\n",
        "print('ok')\n",
    ]
    t0 = time.monotonic()
    results = run_programs(programs, timeout_s=3, memory_mb=512, workers=3)
    elapsed = time.monotonic() - t0
    assert [r.status for r in results] == [PASSED, TIMEOUT, MEMORY, TIMEOUT, FAILED, PASSED]
    assert "AssertionError" in results[4].stderr_tail
    assert elapsed < 40, f"timeouts were not enforced: {elapsed:.1f}s"


def test_sandbox_hides_the_callers_environment(monkeypatch):
    monkeypatch.setenv("OMNIOPD_SECRET_TEST_KEY", "sk-do-not-leak")
    program = "import os\nassert dict(os.environ) == {}, sorted(os.environ)\n"
    [result] = run_programs([program], timeout_s=10)
    assert result.status == PASSED, result.stderr_tail


def test_extract_code_prefers_python_fence():
    text = "Here:\n```text\nnot code\n```\nand\n```python\ndef f():\n    return 1\n```\nDone."
    assert extract_code(text) == "def f():\n    return 1\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("x = 2") == "x = 2"


def test_humaneval_and_mbpp_reference_solutions_pass_and_wrong_ones_fail(benchmarks_dir):
    he = benchmarks.load("humaneval", benchmarks_dir)[:3]
    mb = [p for p in benchmarks.load("mbpp", benchmarks_dir) if p.extra["mbpp_split"] == "test"][:3]
    # canonical HumanEval solution as a body continuation, and as a full fenced function definition
    body = [he[0].extra["canonical_solution"]]
    full = ["```python\n" + he[1].extra["prompt"] + he[1].extra["canonical_solution"] + "```"]
    wrong = [f"```python\ndef {he[2].extra['entry_point']}(*args, **kwargs):\n    return None\n```"]
    assert grade_responses("humaneval", he, [body, full, wrong], code_timeout_s=20) == [[True], [True], [False]]
    mb_answers = [["```python\n" + mb[0].extra["code"] + "\n```"], [mb[1].extra["code"]], ["def nothing(): pass"]]
    assert grade_responses("mbpp", mb, mb_answers, code_timeout_s=20) == [[True], [True], [False]]
    assert "check(" in humaneval_program(he[0].extra, body[0]).tests
    assert mbpp_program(mb[0].extra, "x").tests.count("assert") == len(mb[0].extra["test_list"])
