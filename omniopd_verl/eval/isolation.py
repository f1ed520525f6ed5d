"""How a sandboxed program is started and how its whole process tree is killed: bubblewrap, else a
private unprivileged user id, else (neither available) the caller's own user.

bwrap (`bubblewrap`, Debian/Ubuntu package of that name; chosen when `bwrap` is on PATH and a probe
sandbox starts): new user, PID, network, IPC, UTS and cgroup namespaces, uid/gid 65534 inside, every
capability dropped, `--die-with-parent`, `--new-session`. Its filesystem is only /usr, /bin, /lib*,
the interpreter's prefix and the virtualenv, all read-only; /proc shows the sandbox's own processes
only; /dev is minimal; /tmp is an empty tmpfs and the work folder is the one writable bind. Killing
bwrap ends the PID namespace, which kills every process in it, double-forked or not.

"uid" (no bwrap, running as root): the program runs as its own unused user id (one per run, from a
range no account uses) and group 65534 with no supplementary groups. Another uid cannot read
/proc/<trainer>/environ or write the root-owned virtualenv; it can write its work folder and the
world-writable /tmp, /var/tmp and /dev/shm, and it still has the network. Because nothing else runs
under that uid, `kill(-1, SIGKILL)` sent *as* that uid kills exactly the program's processes, wherever
they moved (new sessions included), and RLIMIT_NPROC caps its fork count.

"user" (no bwrap, and not root or no interpreter an unprivileged uid can run): the caller's own user, in a new session; only its process group is
killed. A program that double-forks into a new session survives, and it can read the caller's files
and /proc/<pid>/environ of the caller's processes. Install bubblewrap to close this.

`OMNIOPD_SANDBOX=bwrap|uid|user` forces a backend (an unavailable one is an error), `auto` (default)
takes the first available in that order.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass

BACKENDS = ("bwrap", "uid", "user")
NOBODY = 65534
# Private uids: 2^31 + pid * 256 + a per-process counter. Unique among the runs alive at one time on
# this machine (pids are unique, < 2^22), above any account's uid, below (uid_t)-1.
_UID_BASE = 2**31
_uid_counter = itertools.count()
_uid_lock = threading.Lock()
SANDBOX_DIR = "/tmp/sandbox"  # where the work folder appears inside bwrap


@dataclass(frozen=True)
class Launch:
    """How to start one program: the argv prefix before the interpreter's, and Popen keyword arguments."""

    backend: str
    argv: list[str]
    cwd: str
    popen: dict
    uid: int | None  # the private uid (backend "uid"), for kill_tree


def _run_quiet(argv: list[str], **kwargs) -> bool:
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, **kwargs).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _readonly_paths() -> list[str]:
    """What the program may read inside bwrap: system libraries, the interpreter and the venv."""
    paths = ["/usr", "/bin", "/lib", "/lib64", "/lib32", "/sbin"]
    for p in (sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable))):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in paths):
            paths.append(p)
    return paths


def bwrap_argv(workdir: str) -> list[str]:
    argv = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--unshare-user", "--uid", str(NOBODY)]
    argv += ["--gid", str(NOBODY), "--cap-drop", "ALL", "--die-with-parent", "--new-session"]
    for path in _readonly_paths():
        argv += ["--ro-bind-try", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind", workdir, SANDBOX_DIR]
    return argv + ["--chdir", SANDBOX_DIR, "--unsetenv", "PWD", "--"]  # bwrap sets PWD; keep env empty


@functools.lru_cache(maxsize=1)
def bwrap_works() -> bool:
    """bwrap is installed and can create the namespaces here (containers often forbid user namespaces)."""
    if not shutil.which("bwrap"):
        return False
    with tempfile.TemporaryDirectory(prefix="omniopd_bwrap_probe_") as workdir:
        return _run_quiet([*bwrap_argv(workdir), sys.executable, "-I", "-S", "-c", "pass"], env={})


@functools.lru_cache(maxsize=1)
def private_uid_interpreter() -> str | None:
    """An interpreter an unprivileged uid can run (ours may live under a 0700 /root), or None."""
    if os.geteuid() != 0:
        return None
    candidates = [sys.executable, getattr(sys, "_base_executable", ""), "/usr/bin/python3", "/usr/local/bin/python3"]
    for exe in dict.fromkeys(c for c in candidates if c and os.path.exists(c)):
        if _run_quiet([exe, "-I", "-c", "import json, resource"], user=NOBODY, group=NOBODY, extra_groups=[], env={}):
            return exe
    return None


def available() -> list[str]:
    return [
        b
        for b in BACKENDS
        if b == "user" or (b == "bwrap" and bwrap_works()) or (b == "uid" and private_uid_interpreter())
    ]


def choose(backend: str | None = None) -> str:
    """The backend to use: `backend`, else $OMNIOPD_SANDBOX, else the first available."""
    wanted = backend or os.environ.get("OMNIOPD_SANDBOX") or "auto"
    if wanted == "auto":
        chosen = available()[0]
        if chosen == "user":
            _warn_weak_sandbox()
        return chosen
    if wanted not in BACKENDS:
        raise ValueError(f"OMNIOPD_SANDBOX={wanted!r} is invalid: allowed one of {['auto', *BACKENDS]}")
    if wanted not in available():
        raise RuntimeError(f"sandbox backend {wanted!r} is not available here (available: {available()})")
    return wanted


@functools.lru_cache(maxsize=1)
def _warn_weak_sandbox() -> None:  # once per process
    logging.getLogger(__name__).warning(
        "code sandbox: bubblewrap is not usable and this process cannot switch to an unprivileged uid, so "
        "programs run as this user: they can read its files and its processes' environments, and a "
        "program that double-forks into a new session survives the timeout. Install bubblewrap to isolate them."
    )


def _next_uid() -> int:
    with _uid_lock:
        return _UID_BASE + (os.getpid() % 2**22) * 256 + next(_uid_counter) % 256


def prepare(backend: str, workdir: str) -> Launch:
    """The launch for one program whose work folder is `workdir` (created by the caller)."""
    common = {"start_new_session": True, "env": {}}  # empty: no API keys, no proxy settings, nothing
    if backend == "bwrap":
        return Launch(backend, [*bwrap_argv(workdir), sys.executable], SANDBOX_DIR, common, None)
    if backend == "uid":
        uid = _next_uid()
        os.chown(workdir, uid, NOBODY)
        popen = {**common, "user": uid, "group": NOBODY, "extra_groups": []}
        return Launch(backend, [private_uid_interpreter() or sys.executable], workdir, popen, uid)
    return Launch(backend, [sys.executable], workdir, common, None)


def kill_tree(launch: Launch, proc: subprocess.Popen) -> None:
    """Kill the program and every descendant, then reap the direct child. Never waits on pipes."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # bwrap: ends the PID namespace; others: the session
    except (ProcessLookupError, PermissionError):
        pass
    if launch.uid is not None:
        # kill(-1) as the private uid signals every process of that uid (it alone runs under it). Run
        # twice: a process forked while the first kill was being delivered is caught by the second.
        for _ in range(2):
            _run_quiet(
                [launch.argv[0], "-I", "-S", "-c", "import os, signal; os.kill(-1, signal.SIGKILL)"],
                user=launch.uid,
                group=NOBODY,
                extra_groups=[],
                env={},
            )
    proc.wait()
