"""Shared fixtures. Everything runs offline (HF_HUB_OFFLINE=1) on real small models.

Tests are imported by path (--import-mode=importlib) because verl's wheel installs a top-level
`tests` package; so share helpers through fixtures here, never `import tests...`.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# naive reference implementations shared by the tests: `import omniopd_naive`
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    """$OMNIOPD_BENCHMARKS, else ../shared/data/benchmarks (read-only; never copy it into the repo).

    The full benchmark files are not shipped (the package carries only a GSM8K subset for the demo), so a
    bare clone skips the tests that read them, saying why; this repository's CI has the folder and runs them."""
    path = Path(os.environ.get("OMNIOPD_BENCHMARKS") or SHARED / "data" / "benchmarks")
    if not path.is_dir():
        pytest.skip(
            f"needs the full benchmark files, not found at {path}: put the public sets there (see "
            "`omniopd-verl data prepare --help`) or set OMNIOPD_BENCHMARKS"
        )
    return path


@pytest.fixture(scope="session")
def gsm8k_subset() -> Path:
    """The GSM8K subset shipped in the package (train.jsonl, test.jsonl): present in every clone and install."""
    from omniopd_verl.package_files import GSM8K_SUBSET, package_file

    return package_file(GSM8K_SUBSET)


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The real SmolLM2-135M-Instruct, converted once from the offline GGUF (see omniopd_verl.runtime.models)."""
    from omniopd_verl.runtime.models import resolve_model_path

    return resolve_model_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, smollm2_path) -> str:
    """A tiny random Llama (2 layers, hidden 64) with SmolLM2's real tokenizer: fast, same vocab."""
    from omniopd_verl.runtime.models import make_tiny_random_model

    return make_tiny_random_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture()
def start_teacher_server():
    """Start the CPU teacher server as a user starts it (`python -m omniopd_verl.serving.openai_compat --model M
    --port 0 FLAGS`, offline, `env` added to the environment): `start(model, *flags, env=None)` returns what it
    printed up to its start-up message. Every server started is stopped at teardown."""
    import subprocess
    import time

    procs = []

    def start(model: str, *flags: str, env: dict[str, str] | None = None) -> str:
        proc = subprocess.Popen(
            [sys.executable, "-m", "omniopd_verl.serving.openai_compat", "--model", model, "--port", "0", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        )
        procs.append(proc)
        lines, deadline = [], time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C" in line:
                break  # the start-up message is out (a readline after it would wait forever)
        return "".join(lines)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)
