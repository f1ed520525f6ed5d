"""Issue 22 section 1: the attacks on the code reward, each actually run in real subprocesses.

Wrong code must not be rewarded for leaving with status 0 or for returning an always-equal object; a
double-forked grandchild must not hold `run_program` past its timeout nor outlive it; model code must
not read the trainer's environment through /proc, run as root, or write outside its temporary folder.
Isolation tests run on every backend this machine offers that claims the property (`isolation`)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import pytest

from omniopd_verl.data.benchmarks import Problem
from omniopd_verl.data.verl_format import ground_truth
from omniopd_verl.eval import isolation
from omniopd_verl.eval.reward import compute_score
from omniopd_verl.eval.sandbox import FAILED, PASSED, TIMEOUT, Program, run_program

# Backends that isolate identity and kill descendants that left the session ("user" does neither).
ISOLATING = [b for b in ("bwrap", "uid") if b in isolation.available()]
isolating = pytest.mark.parametrize(
    "backend", ISOLATING or [pytest.param("none", marks=pytest.mark.skip("no isolating sandbox backend here"))]
)

EXITS = {
    "sys.exit": "import sys\nsys.exit(0)\n",
    "os._exit": "import os\nos._exit(0)\n",
    "atexit": "import atexit, os\natexit.register(os._exit, 0)\n",
    "excepthook": "import os, sys\nsys.excepthook = lambda *exc: os._exit(0)\n",
}
ALWAYS_EQUAL = (
    "class AlwaysEqual:\n"
    "    def __eq__(self, other):\n        return True\n"
    "    def __ne__(self, other):\n        return False\n"
    "    def __bool__(self):\n        return True\n"
    "    def __hash__(self):\n        return 0\n\n"
)


# Rows in the benchmarks' own formats (HumanEval: prompt/test/entry_point; MBPP: test_list), built in
# the test so the attacks run on a bare clone too (the full benchmark files are not shipped).
HUMANEVAL = Problem(
    "HumanEval/attack",
    "",
    "",
    {
        "prompt": 'def add(a: int, b: int) -> int:\n    """The sum of a and b."""\n',
        "entry_point": "add",
        "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 1) == -3\n",
        "canonical_solution": "    return a + b\n",
    },
)
MBPP = Problem(  # MBPP 4's tests, which compare the result directly
    "4",
    "",
    "",
    {
        "test_list": [
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65]",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75]",
        ],
        "test_setup_code": "",
        "code": "import heapq as hq\ndef heap_queue_largest(nums, n):\n    return hq.nlargest(n, nums)\n",
    },
)


@pytest.fixture(scope="module")
def rows():
    return {"humaneval": (HUMANEVAL, "add"), "mbpp_sanitized": (MBPP, "heap_queue_largest")}


@pytest.mark.parametrize("exit_kind", sorted(EXITS))
@pytest.mark.parametrize("source", ["humaneval", "mbpp_sanitized"])
def test_wrong_code_that_exits_with_status_0_gets_no_reward(rows, source, exit_kind):
    problem, name = rows[source]
    truth, _ = ground_truth(problem, "code")
    wrong = f"```python\ndef {name}(*args, **kwargs):\n    return None\n\n{EXITS[exit_kind]}```"
    assert compute_score(source, wrong, truth, {}) == 0.0
    # control: the same harness still rewards the reference answer
    right = problem.extra.get("code") or problem.extra["prompt"] + problem.extra["canonical_solution"]
    assert compute_score(source, f"```python\n{right}\n```", truth, {}) == 1.0


@pytest.mark.parametrize("source", ["humaneval", "mbpp_sanitized"])
def test_an_always_equal_object_gets_no_reward(rows, source):
    problem, name = rows[source]
    truth, _ = ground_truth(problem, "code")
    wrong = f"```python\n{ALWAYS_EQUAL}def {name}(*args, **kwargs):\n    return AlwaysEqual()\n```"
    assert compute_score(source, wrong, truth, {}) == 0.0


def test_strict_comparisons_keep_what_the_benchmarks_accept_and_refuse_what_lies():
    code = (
        "import collections, re\n"
        "class Num(int):\n    def __sub__(self, other):\n        return 0\n"
        "def f(x):\n    return x + 1\n"
        "def counts(s):\n    return collections.Counter(s)\n"
        "def match(s):\n    return re.match('a', s)\n"
        "def lying(x):\n    return Num(x)\n"
    )
    accepted = [
        "assert f(1) == 2.0 and f(1) == 2",  # numbers compare across int/float, as the benchmarks do
        "assert counts('aab') == {'a': 2, 'b': 1}",
        "assert match('abc') and not match('b')",
        "assert sorted(set(map(f, [1, 2]))) == [2, 3]",
    ]
    for tests in accepted:
        assert run_program(Program(code, tests), timeout_s=10).status == PASSED, tests
    refused = ["assert abs(lying(1) - 5) < 1e-9", "assert [lying(1)] == [5]", "assert lying(1)"]
    for tests in refused:
        result = run_program(Program(code, tests), timeout_s=10)
        assert result.status == FAILED and "NotPlain: the tested value has type Num" in result.stderr_tail, tests


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("backend", isolation.available())
@pytest.mark.parametrize("main_loops", [False, True])
def test_a_double_forked_grandchild_neither_delays_the_timeout_nor_survives_it(backend, main_loops):
    marker = f"omniopd-grandchild-{uuid.uuid4().hex}"
    program = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:  # the grandchild: a new session, stdout/stderr still open\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', {marker!r}])\n"
        "    os._exit(0)\n"
        "time.sleep(0.5)\n" + ("while True:\n    pass\n" if main_loops else "")
    )
    start = time.monotonic()
    result = run_program(program, timeout_s=2, backend=backend)
    elapsed = time.monotonic() - start
    assert elapsed < 2 + 10, f"run_program(timeout_s=2) took {elapsed:.1f}s"
    assert result.status == (TIMEOUT if main_loops else PASSED), result
    if backend == "user":
        return  # documented: the caller's own user cannot find a descendant that left the session
    deadline = time.monotonic() + 10
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(marker) == [], "the double-forked grandchild outlived run_program"


@pytest.fixture()
def trainer_like_process():
    """A root process (like the trainer) whose environment holds a key, alive while the test runs."""
    secret = f"sk-omniopd-{uuid.uuid4().hex}"
    proc = subprocess.Popen(["sleep", "60"], env={"OPENAI_API_KEY": secret, "PATH": "/usr/bin:/bin"})
    try:
        yield proc.pid, secret
    finally:
        proc.kill()
        proc.wait()


@isolating
def test_model_code_cannot_read_a_trainers_environment_through_proc(backend, trainer_like_process):
    pid, secret = trainer_like_process
    # the attack works from here (read until the new process's environment is there: on a loaded machine
    # one CI rehearsal read it empty right after Popen returned)
    deadline = time.monotonic() + 10
    while secret.encode() not in Path(f"/proc/{pid}/environ").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert secret.encode() in Path(f"/proc/{pid}/environ").read_bytes()
    program = (
        "import os\nleaked = []\n"
        f"for name in ['{pid}', str(os.getppid())] + os.listdir('/proc'):\n"
        "    try:\n"
        "        data = open('/proc/%s/environ' % name, 'rb').read()\n"
        "    except OSError:\n"
        "        continue\n"
        f"    if b'{secret}' in data:\n"
        "        leaked.append(name)\n"
        "assert leaked == [], leaked\n"
    )
    result = run_program(program, timeout_s=10, backend=backend)
    assert result.status == PASSED, result.stderr_tail


@isolating
def test_model_code_runs_unprivileged_and_writes_only_its_temporary_folder(backend, tmp_path):
    venv_target = Path(sysconfig.get_paths()["purelib"]) / f"omniopd_pwned_{uuid.uuid4().hex}.pth"
    repo_target = Path(__file__).parent / f"omniopd_pwned_{uuid.uuid4().hex}"
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o755)
    program = (
        "import os\n"
        "assert os.geteuid() != 0 and os.getegid() != 0, (os.geteuid(), os.getegid())\n"
        "open('scratch.txt', 'w').write('ok')  # its own folder is writable\n"
        "assert open('scratch.txt').read() == 'ok'\n"
        "written = []\n"
        f"for target in [{str(venv_target)!r}, {str(repo_target)!r}, {str(outside / 'x')!r}, {sys.executable!r}]:\n"
        "    try:\n"
        "        with open(target, 'a') as fh:\n"
        "            fh.write('')\n"
        "        written.append(target)\n"
        "    except OSError:\n"
        "        pass\n"
        "assert written == [], written\n"
    )
    try:
        result = run_program(program, timeout_s=10, backend=backend)
        assert result.status == PASSED, result.stderr_tail
    finally:
        for target in (venv_target, repo_target, outside / "x"):
            target.unlink(missing_ok=True)
    assert not venv_target.exists() and not repo_target.exists()
    assert os.stat(sys.executable).st_size > 0  # opened for append, never truncated
