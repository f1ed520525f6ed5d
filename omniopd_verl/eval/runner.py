"""Evaluate one model on math and code benchmarks: generate, grade, and summarise per benchmark.

Math answers are graded by `math_grader.grade` (math-verify); code answers are run against the
benchmark's tests in `sandbox` subprocesses. Prompts are built exactly as `omniopd-verl data prepare`
builds them (same templates), so evaluation sees what training saw.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import asdict

from omniopd_verl.data import benchmarks
from omniopd_verl.data.templates import DEFAULT_TEMPLATE
from omniopd_verl.data.verl_format import chat_prompt
from omniopd_verl.eval import code_tasks, math_grader, sandbox
from omniopd_verl.eval.generation import SamplingSpec
from omniopd_verl.eval.metrics import summarize


def eval_problems(name: str, *, limit: int | None = None, benchmarks_dir=None) -> list[benchmarks.Problem]:
    problems = benchmarks.load(name, benchmarks_dir)
    if name == "mbpp":  # the MBPP paper's test split (task ids 11-510), not the few-shot/train rows
        problems = [p for p in problems if p.extra["mbpp_split"] == "test"]
    return problems[:limit] if limit else problems


def grade_responses(
    name: str, problems, responses: list[list[str]], *, code_timeout_s: float = 10.0, code_memory_mb: int = 1024
) -> list[list[bool]]:
    ability = benchmarks.spec(name).ability
    if ability == "math":
        return [[math_grader.grade(r, p.answer) for r in rs] for p, rs in zip(problems, responses, strict=True)]
    build = code_tasks.PROGRAM_BUILDERS[name]
    programs = [build(p.extra, r) for p, rs in zip(problems, responses, strict=True) for r in rs]
    results = sandbox.run_programs(programs, timeout_s=code_timeout_s, memory_mb=code_memory_mb)
    flat = [r.passed for r in results]
    n = len(responses[0]) if responses else 0
    return [flat[i * n : (i + 1) * n] for i in range(len(problems))]


def evaluate(
    generator,
    names: list[str],
    spec: SamplingSpec,
    *,
    ks=(1,),
    limit: int | None = None,
    benchmarks_dir=None,
    math_template: str | None = None,
    code_template: str | None = None,
    system_prompt: str | None = None,
    code_timeout_s: float = 10.0,
    on_records=None,
    log=None,
) -> dict:
    """{'sampling': ..., 'benchmarks': {name: metrics + seconds}}; `on_records(name, records)` gets the
    per-problem generations and grades (for --save-generations); `log(line)` gets progress lines (per
    benchmark, and per generated batch when the back-end's generate takes a `progress` callback)."""
    for name in names:
        benchmarks.spec(name)  # fail on a typo before loading a model's worth of work
    report = {
        "backend": getattr(generator, "name", type(generator).__name__),
        "sampling": asdict(spec),
        "limit": limit,
        "benchmarks": {},
    }
    for name in names:
        ability = benchmarks.spec(name).ability
        template = (math_template if ability == "math" else code_template) or DEFAULT_TEMPLATE[ability]
        problems = eval_problems(name, limit=limit, benchmarks_dir=benchmarks_dir)
        prompts = [chat_prompt(p.question, template, system_prompt) for p in problems]
        t0 = time.perf_counter()
        if log is not None:
            log(f"{name}: generating {len(prompts)} prompts x {spec.n} samples")
        if log is not None and "progress" in inspect.signature(generator.generate).parameters:

            def progress(done: int, total: int, name=name, t0=t0) -> None:
                log(f"{name}: {done}/{total} prompts generated ({time.perf_counter() - t0:.0f}s)")

            responses = generator.generate(prompts, spec, progress=progress)
        else:
            responses = generator.generate(prompts, spec)
        t1 = time.perf_counter()
        if log is not None:
            log(f"{name}: generated in {t1 - t0:.1f}s; grading")
        correct = grade_responses(name, problems, responses, code_timeout_s=code_timeout_s)
        t2 = time.perf_counter()
        metrics = summarize(correct, ks)
        metrics.update(generate_s=round(t1 - t0, 2), grade_s=round(t2 - t1, 2))
        report["benchmarks"][name] = metrics
        if on_records is not None:
            on_records(
                name,
                [
                    {"benchmark": name, "id": p.id, "prompt": pr, "answer": p.answer, "responses": rs, "correct": cs}
                    for p, pr, rs, cs in zip(problems, prompts, responses, correct, strict=True)
                ],
            )
    report["grader"] = dict(math_grader.GRADER_STATS)
    return report


def format_table(report: dict) -> str:
    """A markdown table: one row per benchmark, one column per metric (percentages)."""
    rows = report["benchmarks"]
    metric_cols = sorted(
        {k for m in rows.values() for k in m if k.startswith(("pass@", "avg@"))},
        key=lambda k: (k.split("@")[0] != "pass", int(k.split("@")[1])),
    )
    header = ["benchmark", "problems", *metric_cols, "gen s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in rows.items():
        cells = [
            name,
            str(m["n_problems"]),
            *(f"{100 * m[c]:.1f}" if c in m else "" for c in metric_cols),
            f"{m['generate_s']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
