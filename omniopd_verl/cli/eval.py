"""`omniopd-verl eval`: pass@1 / avg@k / pass@k of a model on math (math-verify) and code (sandboxed tests).

omniopd-verl eval --model smollm2-135m-instruct --benchmarks gsm8k,math500 --limit 5
omniopd-verl eval --model ckpt/hf --backend vllm --benchmarks math --n 16 --temperature 0.6 --pass-k 1,8,16
omniopd-verl eval --model ckpt/hf --benchmarks code --n 5 --temperature 0.8 --pass-k 1,5
"""

from __future__ import annotations

import argparse

HELP = "evaluate a model on the math and code benchmarks (table + JSON; progress on stderr)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="local model folder or a built-in name (smollm2-135m-instruct)")
    parser.add_argument(
        "--benchmarks",
        default="math",
        help="comma-separated names; 'math' = gsm8k,math500,aime24,aime25,amc23,minerva_math,"
        "olympiadbench; 'code' = humaneval,mbpp; 'all' = both",
    )
    parser.add_argument("--benchmarks-dir", default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N problems per benchmark (quick runs)")
    parser.add_argument("--backend", default="transformers", help="transformers | vllm")
    parser.add_argument("--n", type=int, default=1, help="samples per problem (avg@n, pass@k need n > 1)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=2048)
    parser.add_argument("--pass-k", default="1", help="comma-separated k for pass@k (each <= n)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--template", default=None, help="math prompt template (as in data prepare)")
    parser.add_argument("--code-template", default=None)
    parser.add_argument("--system-prompt", default=None)
    parser.add_argument("--batch-size", type=int, default=8, help="transformers back-end batch size")
    parser.add_argument("--device", default=None, help="transformers back-end device (default cuda if available)")
    parser.add_argument("--dtype", default="auto", help="transformers: auto | float32 | bfloat16 | float16")
    parser.add_argument(
        "--cpu-threads",
        type=int,
        default=None,
        help="transformers on CPU: torch threads (default torch's; 1 is much faster on a busy machine)",
    )
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm back-end")
    parser.add_argument("--max-model-len", type=int, default=None, help="vllm back-end")
    parser.add_argument("--code-timeout", type=float, default=10.0, help="seconds per code test program")
    parser.add_argument("--output", default=None, help="write the JSON report here (instead of to stdout)")
    parser.add_argument(
        "--save-generations",
        default=None,
        help="write every prompt, sample and grade as JSONL (input of `data sft` for SeqKD)",
    )


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
