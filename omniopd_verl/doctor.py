"""`python -m omniopd_verl.doctor`: check that this environment can run OmniOPD, and say what is missing.

Run at the end of `make setup`. It imports the pieces a run needs (torch, verl's trainer modules,
transformers, sentence-transformers, litellm) and every built-in scheduler/similarity plugin, and
prints versions. It exits non-zero on anything broken, naming it; optional GPU extras only warn.
"""

from __future__ import annotations

import importlib
import os
import sys
import time

REQUIRED = [
    "torch",
    "verl",
    "verl.trainer.ppo.core_algos",
    "verl.experimental.agent_loop",
    "verl.experimental.reward_loop",
    "transformers",
    "sentence_transformers",
    "litellm",
    "omegaconf",
    "rapidfuzz",
    "math_verify",
]
OPTIONAL = ["vllm", "megatron.core"]


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    failures: list[str] = []
    for name in REQUIRED:
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(name)
            version = getattr(module, "__version__", "")
            print(f"ok   {name:34s} {version:14s} {time.perf_counter() - t0:5.1f}s")
        except Exception as exc:  # report every broken import, not just the first
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"FAIL {name}: {type(exc).__name__}: {exc}")
    for name in OPTIONAL:
        try:
            importlib.import_module(name)
            print(f"ok   {name} (optional GPU extra)")
        except Exception:
            print(f"--   {name} not installed (optional GPU extra; CPU runs do not need it)")

    from omniopd_verl import registry
    from omniopd_verl.errors import PluginError

    for kind in ("schedulers", "similarity"):
        for name in registry.available(kind):
            try:
                registry.load(kind, name)
                print(f"ok   plugin {kind}/{name}")
            except PluginError as exc:
                failures.append(str(exc))
                print(f"FAIL plugin {kind}/{name}: {exc}")
    print(f"teachers installed: {registry.available('teachers')}")
    from omniopd_verl.errors import ConfigError
    from omniopd_verl.runtime.models import OFFLINE_FILES, verify_offline_files

    for name in OFFLINE_FILES:  # the shipped model files against their recorded sha256 digests
        try:
            verify_offline_files(name)
            print(f"ok   offline model files {name} (sha256 as recorded)")
        except ConfigError as exc:
            failures.append(str(exc))
            print(f"FAIL offline model files {name}: {exc}")
    try:
        import torch

        if not torch.__version__.startswith("2.13.0") and "--any-torch" not in sys.argv:
            print(f"note torch {torch.__version__}: CPU machines here use the local 2.13.0 wheel (constraints.txt)")
    except ImportError:
        pass
    if failures:
        print(f"\n{len(failures)} problem(s):\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("environment ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
