"""`omniopd-verl eval`: pass@1 / avg@k / pass@k of a model on math (math-verify) and code (sandboxed tests).

omniopd-verl eval --model smollm2-135m-instruct --benchmarks gsm8k,math500 --limit 5
omniopd-verl eval --model ckpt/hf --backend vllm --benchmarks math --n 16 --temperature 0.6 --pass-k 1,8,16
omniopd-verl eval --model ckpt/hf --benchmarks code --n 5 --temperature 0.8 --pass-k 1,5
omniopd-verl eval --config run.yaml eval.n=8 eval.pass_k=1,8      # the file's `eval:` node, then overrides

Every setting is a field of EvalSettings: `eval.KEY` in --config's `eval:` node, an `eval.KEY=VALUE`
override (the grammar of `train` and `audit`, omniopd_verl/config/overrides.py), or its flag `--KEY`
(a shortcut; the same key given by a flag and an override is refused).
"""

from __future__ import annotations

import argparse
import dataclasses

HELP = "evaluate a model on the math and code benchmarks (table + JSON; progress on stderr)"


@dataclasses.dataclass
class EvalSettings:
    """What `eval` reads: the `eval:` node of --config FILE, `eval.KEY=VALUE` overrides, or the flags."""

    model: str | None = None
    """local model folder or a built-in name (smollm2-135m-instruct)"""
    benchmarks: str = "math"
    """comma-separated names; 'math' = gsm8k,math500,aime24,aime25,amc23,minerva_math,olympiadbench;
    'code' = humaneval,mbpp; 'all' = both"""
    benchmarks_dir: str | None = None
    """folder of the benchmark files (default $OMNIOPD_BENCHMARKS or ../shared/data/benchmarks)"""
    limit: int | None = None
    """first N problems per benchmark (quick runs)"""
    backend: str = "transformers"
    """transformers | vllm"""
    n: int = 1
    """samples per problem (avg@n, pass@k need n > 1)"""
    temperature: float = 0.0
    """0 = greedy"""
    top_p: float = 1.0
    """nucleus sampling"""
    max_new_tokens: int = 2048
    """longest answer, in tokens"""
    pass_k: str = "1"
    """comma-separated k for pass@k (each <= n)"""
    seed: int = 0
    """sampling seed"""
    template: str | None = None
    """math prompt template (as in data prepare)"""
    code_template: str | None = None
    """code prompt template"""
    system_prompt: str | None = None
    """system message before every prompt"""
    batch_size: int = 8
    """transformers back-end batch size"""
    device: str | None = None
    """transformers back-end device (default cuda if available)"""
    dtype: str = "auto"
    """transformers: auto | float32 | bfloat16 | float16"""
    cpu_threads: int | None = None
    """transformers on CPU: torch threads (default torch's; 1 is much faster on a busy machine)"""
    tensor_parallel_size: int = 1
    """vllm back-end"""
    max_model_len: int | None = None
    """vllm back-end"""
    code_timeout: float = 10.0
    """seconds per code test program"""
    output: str | None = None
    """write the JSON report here (instead of to stdout)"""
    save_generations: str | None = None
    """write every prompt, sample and grade as JSONL (input of `data sft` for SeqKD)"""

    def __post_init__(self) -> None:
        from omniopd_verl.errors import ConfigError

        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            optional = "None" in kind
            if value is None and optional:
                continue
            if kind.startswith("int"):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif kind.startswith("float"):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:  # a YAML override reads `eval.pass_k=1` as the number 1: the setting is its text
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    value = str(value)
                    setattr(self, f.name, value)
                ok = isinstance(value, str)
            if not ok:
                allowed = kind.split(" ")[0].replace("str", "a string").replace("int", "an integer")
                allowed = allowed.replace("float", "a number") + (" or null" if optional else "")
                raise ConfigError(f"eval.{f.name}={value!r} is invalid: allowed {allowed}")


def _flag_help(name: str) -> str:
    default = next(f.default for f in dataclasses.fields(EvalSettings) if f.name == name)
    return f"{_FIELD_DOCS.get(name, '')} (= eval.{name}; default {default})"


def _field_docs() -> dict[str, str]:
    """The attribute docstrings of EvalSettings (one place for the help text and the YAML keys)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(EvalSettings)))
    body, docs = tree.body[0].body, {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


_FIELD_DOCS = _field_docs()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        help="a YAML file with an `eval:` node (other nodes, e.g. omniopd: or local:, are not read); the flags "
        "and eval.KEY=VALUE overrides go on top of it",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="eval.KEY=VALUE",
        help="any eval setting, with the grammar of `train` and `audit` (VALUE is YAML)",
    )
    for f in dataclasses.fields(EvalSettings):  # every setting has its flag: a shortcut for eval.KEY=VALUE
        kind = str(f.type).split(" ")[0]
        convert = {"int": int, "float": float}.get(kind, str)
        parser.add_argument("--" + f.name.replace("_", "-"), type=convert, default=None, help=_flag_help(f.name))


def settings_from(args: argparse.Namespace) -> EvalSettings:
    """EvalSettings from --config's `eval:` node, then the flags given, then the overrides. Raises ConfigError."""
    from omniopd_verl.config import build_dataclass
    from omniopd_verl.config.overrides import load_config
    from omniopd_verl.errors import ConfigError

    flags = {
        f"eval.{f.name}": ("--" + f.name.replace("_", "-"), getattr(args, f.name))
        for f in dataclasses.fields(EvalSettings)
        if getattr(args, f.name) is not None
    }
    data = load_config(args.config, args.overrides, {"eval": EvalSettings}, other_nodes="ignore", flags=flags)
    settings = build_dataclass(EvalSettings, data["eval"], "", node="eval")
    if not settings.model:
        raise ConfigError(
            "eval.model is not set: give --model PATH_OR_NAME, eval.model=..., or model: in --config's eval: node"
        )
    return settings


def _names(spec: str) -> list[str]:
    from omniopd_verl.data.benchmarks import CODE_EVAL, MATH_EVAL

    groups = {"math": MATH_EVAL, "code": CODE_EVAL, "all": MATH_EVAL + CODE_EVAL}
    names: list[str] = []
    for part in (s.strip() for s in spec.split(",") if s.strip()):
        names.extend(groups.get(part, [part]))
    return names


def _pass_ks(spec: str, n: int) -> list[int]:
    from omniopd_verl.errors import ConfigError

    try:
        ks = sorted({int(k) for k in spec.split(",") if k.strip()})
    except ValueError:
        raise ConfigError(f"--pass-k {spec!r} is invalid: allowed comma-separated integers, e.g. 1,8,16") from None
    if not ks or ks[0] < 1:
        raise ConfigError(f"--pass-k {spec!r} is invalid: allowed comma-separated integers >= 1")
    if any(k > n for k in ks):
        raise ConfigError(f"--pass-k {spec} has k > --n {n}: pass@k needs n >= k samples per problem")
    return ks


def _ensure_folder(flag: str, path: str) -> None:
    """Create the folder of an output file now, so a path that cannot be written fails before generation."""
    import os

    from omniopd_verl.errors import ConfigError

    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path!r} is a folder: allowed a file path")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag} {path!r}: its folder cannot be created: {exc.strerror}") from None


def run(args: argparse.Namespace) -> int:
    """Check every flag and path, load the model, generate (progress on stderr), grade, report.

    stdout gets the table, and the JSON report too unless --output is given (then the JSON goes only there).
    """
    import json
    import os
    import sys
    from pathlib import Path

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = argparse.Namespace(**dataclasses.asdict(settings_from(args)))
    from omniopd_verl.data import benchmarks
    from omniopd_verl.eval import math_grader
    from omniopd_verl.eval.generation import SamplingSpec, make_generator
    from omniopd_verl.eval.runner import evaluate, format_table

    names = _names(args.benchmarks)
    root = Path(args.benchmarks_dir) if args.benchmarks_dir else benchmarks.default_benchmarks_dir()
    for name in names:  # a typo or a missing file fails now, not after the model has loaded
        if not (root / benchmarks.spec(name).file).is_file():
            benchmarks.load(name, root)  # raises the ConfigError naming the expected file
    ks = _pass_ks(args.pass_k, args.n)
    spec = SamplingSpec(
        n=args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    for flag, path in (("--output", args.output), ("--save-generations", args.save_generations)):
        if path:
            _ensure_folder(flag, path)
    if args.backend == "vllm":
        options = {"tensor_parallel_size": args.tensor_parallel_size, "max_model_len": args.max_model_len}
    else:
        options = {
            "batch_size": args.batch_size,
            "device": args.device,
            "dtype": args.dtype,
            "cpu_threads": args.cpu_threads,
        }
    previous_threads = None
    if args.backend != "vllm" and args.cpu_threads is not None:
        import torch

        previous_threads = torch.get_num_threads()  # restored below: run() may be called in-process
    generator = make_generator(args.backend, args.model, **options)

    gen_file = open(args.save_generations, "w", encoding="utf-8") if args.save_generations else None  # noqa: SIM115

    def save(_name, records):
        for record in records:
            gen_file.write(json.dumps(record) + "\n")
        gen_file.flush()

    try:
        report = evaluate(
            generator,
            names,
            spec,
            ks=ks,
            limit=args.limit,
            benchmarks_dir=args.benchmarks_dir,
            math_template=args.template,
            code_template=args.code_template,
            system_prompt=args.system_prompt,
            code_timeout_s=args.code_timeout,
            on_records=save if gen_file else None,
            log=lambda line: print(f"eval: {line}", file=sys.stderr, flush=True),
        )
    finally:
        if gen_file:
            gen_file.close()
        math_grader.shutdown_pool()
        if previous_threads is not None:
            torch.set_num_threads(previous_threads)
    report["model"] = args.model
    print(format_table(report))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
        print(f"eval: report written to {args.output}", file=sys.stderr)
    else:
        print(json.dumps(report, indent=2))
    return 0
