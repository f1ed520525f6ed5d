"""`omniopd-verl data {prepare,sft,list}`: benchmark files -> verl parquet; teacher samples -> SFT parquet.

omniopd-verl data prepare --out data/verl                       # every benchmark, default templates
omniopd-verl data prepare --benchmarks gsm8k,math500 --template think_boxed
omniopd-verl data prepare --input my.jsonl --name mine --question-key q --answer-key a --out data/verl
omniopd-verl data sft --generations gens.jsonl --out sft/train.parquet   # SeqKD: correct samples only
"""

from __future__ import annotations

import argparse

HELP = "prepare verl parquet files from the benchmarks or your own data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("prepare", help="benchmarks (or --input) -> verl RL parquet, printing row counts")
    p.add_argument(
        "--benchmarks", default="all", help="comma-separated benchmark names, or 'all' (see `omniopd-verl data list`)"
    )
    p.add_argument(
        "--benchmarks-dir",
        default=None,
        help="folder with SOURCES.md (default: $OMNIOPD_BENCHMARKS or ../shared/data/benchmarks)",
    )
    p.add_argument("--out", default="data/verl", help="output folder: <out>/<name>/<split>.parquet")
    p.add_argument(
        "--template", default=None, help="math prompt template name or string with {question} (default boxed)"
    )
    p.add_argument("--code-template", default=None, help="code prompt template (default code)")
    p.add_argument("--system-prompt", default=None, help="optional system turn prepended to every prompt")
    p.add_argument("--input", default=None, help="your own .jsonl/.parquet instead of the benchmarks")
    p.add_argument("--name", default=None, help="data_source name for --input")
    p.add_argument("--question-key", default="question")
    p.add_argument("--answer-key", default="answer")
    p.add_argument("--answer-format", default="raw", help="raw | gsm8k (after ####) | boxed (last \\boxed{})")
    p.add_argument("--id-key", default=None)
    p.add_argument("--ability", default="math")
    p.add_argument("--split", default="train")

    s = sub.add_parser("sft", help="generations from `omniopd-verl eval --save-generations` -> SFT parquet")
    s.add_argument("--generations", required=True, help="JSONL written by eval --save-generations")
    s.add_argument("--out", required=True, help="output .parquet (messages column)")
    s.add_argument("--keep-wrong", action="store_true", help="keep samples the grader marked wrong")

    sub.add_parser("list", help="list the known benchmarks")


def run(args: argparse.Namespace) -> int:
    return {"prepare": _prepare, "sft": _sft, "list": _list}[args.data_command](args)


def _list(args) -> int:
    from omniopd_verl.data.benchmarks import BENCHMARKS

    for name, spec in BENCHMARKS.items():
        print(f"{name:16s} {spec.ability:5s} {spec.split:6s} {spec.file:40s} {spec.description}")
    return 0


def _prepare(args) -> int:
    import os

    from omniopd_verl.data import benchmarks
    from omniopd_verl.data.prepare import prepare_benchmarks, prepare_user_rows
    from omniopd_verl.errors import ConfigError

    _check_creatable("--out", args.out)  # before any reading: a path that cannot be written fails first
    if args.input:
        if not args.name:
            raise ConfigError("data prepare --input needs --name (the data_source of the rows)")
        if not os.path.isfile(args.input):
            raise ConfigError(f"--input {args.input!r}: no such file")
        n, path = prepare_user_rows(args)
        print(f"{args.name:16s} {n:7d} rows  {path}")
        return 0
    names = (
        list(benchmarks.BENCHMARKS)
        if args.benchmarks == "all"
        else [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    )
    for name in names:
        benchmarks.spec(name)  # fail on a typo before writing anything
    counts = prepare_benchmarks(
        names,
        args.out,
        benchmarks_dir=args.benchmarks_dir,
        math_template=args.template,
        code_template=args.code_template,
        system_prompt=args.system_prompt,
    )
    for name, (n, path) in counts.items():
        print(f"{name:16s} {n:7d} rows  {path}")
    print(f"{'total':16s} {sum(n for n, _ in counts.values()):7d} rows")
    return 0


def _check_creatable(flag: str, folder: str) -> None:
    """The folder exists, or its nearest existing ancestor is a writable folder (nothing is created here)."""
    import os

    from omniopd_verl.errors import ConfigError

    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"{flag} {folder!r} cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK):
        raise ConfigError(f"{flag} {folder!r} cannot be created: {probe} is not writable")


def _sft(args) -> int:
    import json
    import os

    from omniopd_verl.data.verl_format import sft_rows, write_parquet
    from omniopd_verl.errors import ConfigError

    _check_creatable("--out", os.path.dirname(os.path.abspath(args.out)))
    records = []
    try:
        with open(args.generations, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConfigError(
                        f"--generations {args.generations} line {lineno} is not JSON: {exc.msg}"
                    ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--generations {args.generations!r} cannot be read: {exc}") from None
    try:
        rows, dropped = sft_rows(records, only_correct=not args.keep_wrong)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"--generations {args.generations}: a record is malformed ({type(exc).__name__}: {exc}); expected the "
            "JSONL written by eval --save-generations"
        ) from None
    if not rows:
        raise ConfigError(f"no SFT rows: all {dropped} samples in {args.generations} were graded wrong")
    path = write_parquet(rows, args.out)
    print(f"sft {len(rows)} rows ({dropped} wrong samples dropped)  {path}")
    return 0
