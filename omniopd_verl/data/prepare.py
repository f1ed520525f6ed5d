"""Write verl parquet files for the shared benchmarks or for a user's own JSONL/parquet file.

`prepare_benchmarks(names, out_dir)` writes `<out_dir>/<name>/<split>.parquet` for each benchmark and
returns {name: rows}. `prepare_user_file(...)` converts any JSONL/parquet with a question and an
answer column.
"""

from __future__ import annotations

import os
from pathlib import Path

from omniopd_verl.data import benchmarks
from omniopd_verl.data.answers import boxed_answer, gsm8k_answer
from omniopd_verl.data.benchmarks import Problem
from omniopd_verl.data.templates import DEFAULT_TEMPLATE
from omniopd_verl.data.verl_format import to_verl_rows, write_parquet
from omniopd_verl.errors import ConfigError


def output_path(out_dir: str | os.PathLike, name: str) -> Path:
    return Path(out_dir) / name / f"{benchmarks.spec(name).split}.parquet"


def prepare_benchmarks(
    names: list[str],
    out_dir: str | os.PathLike,
    *,
    benchmarks_dir=None,
    math_template: str | None = None,
    code_template: str | None = None,
    system_prompt: str | None = None,
) -> dict[str, tuple[int, Path]]:
    counts = {}
    for name in names:
        spec = benchmarks.spec(name)
        template = (math_template if spec.ability == "math" else code_template) or DEFAULT_TEMPLATE[spec.ability]
        problems = benchmarks.load(name, benchmarks_dir)
        rows = to_verl_rows(
            problems,
            data_source=name,
            ability=spec.ability,
            split=spec.split,
            template=template,
            system_prompt=system_prompt,
        )
        counts[name] = (len(rows), write_parquet(rows, output_path(out_dir, name)))
    return counts


ANSWER_FORMATS = ("raw", "gsm8k", "boxed")


def read_user_file(
    path: str | os.PathLike,
    *,
    question_key: str,
    answer_key: str,
    answer_format: str = "raw",
    id_key: str | None = None,
) -> list[Problem]:
    """A user's JSONL or parquet -> problems. `answer_format` says how to get the final answer out of the
    answer column: as is (`raw`), after GSM8K's '####' (`gsm8k`), or the last \\boxed{} (`boxed`)."""
    import pandas as pd

    if answer_format not in ANSWER_FORMATS:
        raise ConfigError(f"--answer-format {answer_format!r} is not one of {list(ANSWER_FORMATS)}")
    path = Path(path)
    if path.suffix == ".parquet":
        try:
            records = pd.read_parquet(path).to_dict("records")
        except Exception as exc:  # pyarrow raises several types for a file that is not parquet
            raise ConfigError(f"input {path} cannot be read as parquet: {type(exc).__name__}: {exc}") from None
    elif path.suffix == ".jsonl":
        records = read_jsonl_objects(path)
    elif path.suffix == ".json":
        records = _read_json_array(path)
    else:
        raise ConfigError(f"input {path} must be .jsonl, .json or .parquet (got {path.suffix!r})")
    if not records:
        raise ConfigError(f"input {path} has no rows")
    for key in (question_key, answer_key):
        if key not in records[0]:
            raise ConfigError(f"input {path} has no column {key!r}; columns: {sorted(records[0])}")
    for i, r in enumerate(records):
        for key in (question_key, answer_key):
            if key not in r:
                raise ConfigError(f"input {path} row {i + 1} has no {key!r}; it has {sorted(r)}")
    extract = {
        "raw": lambda a: str(a).strip(),
        "gsm8k": gsm8k_answer,
        "boxed": lambda a: boxed_answer(str(a), source=str(path)),
    }[answer_format]
    problems = []
    for i, r in enumerate(records):
        extra = {k: v for k, v in r.items() if k not in (question_key, answer_key) and _scalar(v)}
        problems.append(
            Problem(str(r[id_key]) if id_key else str(i), str(r[question_key]), extract(r[answer_key]), extra)
        )
    return problems


def read_jsonl_objects(path: str | os.PathLike) -> list[dict]:
    """Every non-blank line of a JSONL file as a dict (errors name the file and the line: data/jsonl.py)."""
    from omniopd_verl.data.jsonl import iter_jsonl_objects

    return [record for _, record in iter_jsonl_objects(path)]


def _read_json_array(path: Path) -> list[dict]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"input {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"input {path} is not UTF-8 text: byte at offset {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} line {exc.lineno} column {exc.colno} is not JSON: {exc.msg}") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ConfigError(f"input {path} must hold a JSON array of objects (or use .jsonl, one object per line)")
    return data


def _scalar(value) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def prepare_user_rows(args) -> tuple[int, Path]:
    """`data prepare --input ...`: a user's file -> <out>/<name>/<split>.parquet."""
    problems = read_user_file(
        args.input,
        question_key=args.question_key,
        answer_key=args.answer_key,
        answer_format=args.answer_format,
        id_key=args.id_key,
    )
    if args.ability not in DEFAULT_TEMPLATE:
        raise ConfigError(f"--ability {args.ability!r} is not one of {sorted(DEFAULT_TEMPLATE)}")
    template = (args.template if args.ability == "math" else args.code_template) or DEFAULT_TEMPLATE[args.ability]
    rows = to_verl_rows(
        problems,
        data_source=args.name,
        ability=args.ability,
        split=args.split,
        template=template,
        system_prompt=args.system_prompt,
    )
    path = write_parquet(rows, Path(args.out) / args.name / f"{args.split}.parquet")
    return len(rows), path
