"""What a CPU smoke run of verl's trainer needs: a tiny model, a tiny dataset, and the step lines.

    python -m omniopd_verl.verl_integration.cpu.smoke prepare DIR   # DIR/tiny_llama, DIR/data/train.parquet

- `prepare(dir)`: a tiny random Llama with SmolLM2's tokenizer (omniopd_verl.runtime.models, ~3 M parameters,
  so a step takes seconds on 2 cores) and 8 arithmetic questions in verl's parquet format
  (data_source 'gsm8k', graded by omniopd_verl.eval.reward). The model is random: CPU mode checks the
  plumbing, not learning.
- `step_metrics_from_log(text)`: verl's console logger lines `step:N - key:value - ...` -> {N: {key: value}}.
- `cpu_env()`: the environment every process of a CPU run needs (VERL_PLATFORM=cpu and quiet threads).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

QUESTIONS = [
    ("What is 3 + 4?", "7"),
    ("What is 12 - 5?", "7"),
    ("What is 6 * 7?", "42"),
    ("What is 81 / 9?", "9"),
    ("Tom has 3 apples and buys 2 more. How many apples does he have?", "5"),
    ("A box holds 4 pens. How many pens are in 3 boxes?", "12"),
    ("What is 10 + 15?", "25"),
    ("What is 9 * 9?", "81"),
]

CPU_ENV = {
    "VERL_PLATFORM": "cpu",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
}

# Ray prefixes worker output with "(TaskRunnerV1 pid=...)" and colour codes
_STEP_LINE = re.compile(r"(?:^|[\s)m])step:(\d+) - (.*)$")


def cpu_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(CPU_ENV)
    return env


def prepare(folder: str | os.PathLike) -> tuple[str, str]:
    """(model path, train parquet path) under `folder`, created once."""
    from omniopd_verl.data.verl_format import write_parquet
    from omniopd_verl.runtime.models import make_tiny_random_model

    folder = Path(folder)
    model = make_tiny_random_model(folder / "tiny_llama")
    data = folder / "data" / "train.parquet"
    if not data.exists():
        rows = [
            {
                "data_source": "gsm8k",
                "prompt": [{"role": "user", "content": q + " Answer with a number."}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": a},
                "extra_info": {"index": i, "split": "train"},
            }
            for i, (q, a) in enumerate(QUESTIONS)
        ]
        write_parquet(rows, data)
    return model, str(data)


def step_metrics_from_log(text: str) -> dict[int, dict[str, float]]:
    """Parse verl's console-logger step lines (later lines for the same step win)."""
    steps: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        match = _STEP_LINE.search(line.strip())
        if not match:
            continue
        metrics = {}
        for part in match.group(2).split(" - "):
            key, sep, value = part.rpartition(":")
            if not sep:
                continue
            try:
                metrics[key] = float(value)
            except ValueError:
                continue
        steps[int(match.group(1))] = metrics
    return steps


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "prepare":
        print("usage: python -m omniopd_verl.verl_integration.cpu.smoke prepare DIR", file=sys.stderr)
        return 2
    model, data = prepare(argv[1])
    print(f"model={model}\ndata={data}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
