"""Run untrusted Python programs (model-written code + tests), one isolated process tree each.

A pass is decided by the harness, never by the exit status: `sandbox_runner` runs the program, then
its tests, then writes a random nonce the program never saw; the parent counts a pass only if that
nonce is in the output. `sys.exit(0)`, `os._exit(0)`, an `atexit` or excepthook exit all end the
process before the nonce is written, so they fail. Tests (`Program.tests`) are made type-strict by
`harness.strict_tests` (an object whose `__eq__` is always True fails).

Isolation (`isolation`): bubblewrap when it works here, else a private unprivileged uid (as root),
else the caller's user, documented there with what each leaves open. Always: an empty environment (no
API keys), stdin closed after the harness read its payload, and these limits, set by the harness
before the program's first line:
  RLIMIT_AS     address space (default 1 GiB): a memory bomb gets MemoryError or is killed
  RLIMIT_CPU    CPU seconds: a busy loop gets SIGXCPU even if the wall clock is generous
  RLIMIT_FSIZE  largest file it may write (16 MiB; this also caps its output), RLIMIT_CORE 0
  RLIMIT_NPROC  processes (backend "uid" only: the count is per uid, and that uid is the program's)
  wall timeout  the parent kills the whole process tree after `timeout_s`
The output goes to unlinked files the parent holds, not to pipes, so a descendant that keeps a copy of
the output open cannot make the parent wait: the parent waits for its direct child only, up to the
timeout, then kills the tree.

One program's failure never affects the others: `run_programs` returns one `ExecResult` per program.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from omniopd_verl.eval import harness, isolation

PASSED, FAILED, TIMEOUT, MEMORY = "passed", "failed", "timeout", "memory"
_RUNNER = (Path(__file__).with_name("sandbox_runner.py")).read_text(encoding="utf-8")
_OUTPUT_LIMIT = 16 * 1024 * 1024


@dataclass(frozen=True)
class Program:
    """Model code plus the tests that decide it (made type-strict before they run)."""

    code: str
    tests: str = ""


@dataclass(frozen=True)
class ExecResult:
    status: str  # passed | failed | timeout | memory
    returncode: int | None
    stderr_tail: str
    backend: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASSED


def _payload(program: Program, nonce: str, memory_mb: int, cpu_s: int, backend: str) -> bytes:
    limits = {
        "RLIMIT_AS": memory_mb * 1024 * 1024,
        "RLIMIT_CPU": cpu_s,
        "RLIMIT_FSIZE": _OUTPUT_LIMIT,
        "RLIMIT_CORE": 0,
    }
    if backend == "uid":
        limits["RLIMIT_NPROC"] = 256
    tests = harness.strict_tests(program.tests) if program.tests.strip() else ""
    return json.dumps({"nonce": nonce, "code": program.code, "tests": tests, "limits": limits}).encode()


def _tail(fh, limit: int) -> bytes:
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(0, size - limit))
    return fh.read()


def _killed_by(rc: int | None, sig: int) -> bool:
    return rc == -sig or rc == 128 + sig  # bwrap reports a signalled child as 128 + signal


def run_program(
    program: str | Program, *, timeout_s: float = 10.0, memory_mb: int = 1024, backend: str | None = None
) -> ExecResult:
    """Run one program; `passed` iff it and its tests ran to the end within the limits."""
    if isinstance(program, str):
        program = Program(program)
    chosen = isolation.choose(backend)
    nonce = secrets.token_hex(16)
    payload = _payload(program, nonce, memory_mb, max(1, int(timeout_s) + 1), chosen)
    with (
        tempfile.TemporaryDirectory(prefix="omniopd_sandbox_") as workdir,
        tempfile.TemporaryFile() as stdin,
        tempfile.TemporaryFile() as stdout,
        tempfile.TemporaryFile() as stderr,
    ):
        stdin.write(payload)
        stdin.seek(0)
        launch = isolation.prepare(chosen, workdir)
        proc = subprocess.Popen(
            [*launch.argv, "-I", "-c", _RUNNER],
            cwd=None if chosen == "bwrap" else launch.cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            **launch.popen,
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        isolation.kill_tree(launch, proc)  # also after a normal exit: background leftovers die with it
        rc = None if timed_out else proc.returncode
        err = _tail(stderr, 2000).decode("utf-8", "replace")
        out = _tail(stdout, _OUTPUT_LIMIT + 64)
    if timed_out or _killed_by(rc, signal.SIGXCPU):
        return ExecResult(TIMEOUT, rc, err, chosen)
    if b"\n" + nonce.encode() + b"\n" in out:
        return ExecResult(PASSED, rc, err, chosen)
    if "MemoryError" in err or "Cannot allocate memory" in err or _killed_by(rc, signal.SIGKILL):
        return ExecResult(MEMORY, rc, err, chosen)
    return ExecResult(FAILED, rc, err, chosen)


def run_programs(
    codes: list[str | Program],
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int | None = None,
    backend: str | None = None,
) -> list[ExecResult]:
    """Run many programs concurrently (threads only wait on subprocesses); results in input order."""
    workers = workers or max(1, min(8, os.cpu_count() or 1))

    def one(code: str | Program) -> ExecResult:
        return run_program(code, timeout_s=timeout_s, memory_mb=memory_mb, backend=backend)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, codes))
