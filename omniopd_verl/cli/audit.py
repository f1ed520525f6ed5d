"""`omniopd-verl audit`: see the teacher's signal on finished responses before spending GPU hours.

Reads IN.jsonl lines {"id", "prompt", "response"} (prompt: a string used as is, or chat messages put
through the student's chat template; optional "teacher_context": privileged text for the teacher
only), runs the student teacher-forced for exact entropies and log-probs, audits every response with
the configured teacher / similarity / scheduler (the same Auditor both training engines use), and
writes OUT.jsonl with one line per input, in input order:
    {"id", "entropy_source", "similarity", "scheduler", "response_len", "anchors_dropped",
     "chunks": [{"start", "end", "entropy", "student_text", "teacher_texts", "similarities",
                 "k_sem", "k_sem_frac", "pi_bar", "pi_hat"}, ...],
     "teacher": {"requests", "retries", "failures", "cache_hits", "prompt_tokens", "completion_tokens",
                 "cost_usd", "seconds"}}
A summary goes to stderr; --report writes a self-contained HTML page.

Every flag, path (including the folders of --output/--report/--cache; --cache may not be the --input,
--output or --report file) and input line (unknown keys refused, lines over 16 MiB refused while read)
is checked before a model is loaded or a teacher is called; a cache file that is not SQLite or cannot
be written is refused when the teacher is built, before the student's weights load. A row whose prompt + response exceeds the student's context
is refused (or skipped and listed with --skip-too-long). When the teacher budget (--max-cost-usd)
stops the run, the rows completed by then are written and the output ends with one trailer line
    {"partial": true, "reason", "rows_written", "rows_total", "missing_ids", "teacher_calls", "teacher_cost_usd"}
(also said on stderr and in the report). Exit codes: 0 ok; 1 the audit itself failed (e.g. the teacher
after its retries); 2 bad input or configuration (one line naming the flag, key or input line);
3 partial output after a budget stop.

Flow (`_audit`): check flags/paths/lines -> tokenize against the student -> build the teacher -> score
the students and audit them (pipelined) -> write.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_PARTIAL = 0, 1, 2, 3
STUDENT_ROWS_PER_STEP = 16  # rows per student scoring call; their audits start while the next rows are scored
HELP = "audit finished responses against a text-only teacher: chunk weights as JSONL (+ an HTML report)"


# shortcut flag dest -> the omniopd key it sets (the same key as `omniopd.KEY=value` and `--config FILE`)
SHORTCUTS = {
    "teacher": "teacher.name",
    "teacher_model": "teacher.model",
    "teacher_api_base": "teacher.api_base",
    "teacher_api_key_env": "teacher.api_key_env",
    "max_concurrency": "teacher.max_concurrency",
    "on_teacher_failure": "teacher.on_failure",
    "max_cost_usd": "teacher.max_cost_usd",
    "teacher_timeout_s": "teacher.timeout_s",
    "max_retries": "teacher.max_retries",
    "cache": "teacher.cache_path",
    "similarity": "similarity",
    "scheduler": "scheduler",
    "chunks": "chunks",
    "samples": "samples",
    "chunk_len": "chunk_len",
    "alpha": "alpha",
    "seed": "seed",
}


def _shortcut(key: str, what: str = "") -> str:
    """Help text of a shortcut flag: the key it sets and its default, read from OmniOPDConfig (never retyped)."""
    from omniopd_verl.config import OmniOPDConfig

    value: Any = OmniOPDConfig()
    for part in key.split("."):
        value = getattr(value, part)
    return f"{what + '; ' if what else ''}= omniopd.{key} (default {value})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help='JSONL with {"id", "prompt", "response"} per line')
    parser.add_argument("--output", required=True, help="JSONL to write, one audited response per line")
    parser.add_argument("--student", required=True, help="local transformers folder, or smollm2-135m-instruct")
    parser.add_argument(
        "--config",
        help="a YAML file with an `omniopd:` node (a local run file or any file with that node; other nodes are "
        "not read); the flags below and omniopd.KEY=VALUE overrides go on top of it",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="omniopd.KEY=VALUE",
        help="any OmniOPDConfig key, as for `train`: omniopd.alpha=2, +omniopd.similarity_options.KEY=VALUE "
        "(+ adds a plugin option), ++omniopd.KEY=VALUE (set or add); VALUE is YAML",
    )
    parser.add_argument("--teacher", help=_shortcut("teacher.name", "teacher plugin (see `omniopd-verl plugins`)"))
    parser.add_argument("--teacher-model", help=_shortcut("teacher.model", "the model name the teacher backend knows"))
    parser.add_argument("--teacher-api-base", help=_shortcut("teacher.api_base", "e.g. http://127.0.0.1:8000/v1"))
    parser.add_argument("--teacher-api-key-env", help=_shortcut("teacher.api_key_env", "variable holding the key"))
    parser.add_argument(
        "--teacher-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="= ++omniopd.teacher.options.KEY=VALUE (VALUE parsed as JSON when it can be); repeatable",
    )
    parser.add_argument("--max-concurrency", type=int, help=_shortcut("teacher.max_concurrency"))
    parser.add_argument("--on-teacher-failure", choices=("error", "drop"), help=_shortcut("teacher.on_failure"))
    parser.add_argument("--similarity", help=_shortcut("similarity"))
    parser.add_argument("--scheduler", help=_shortcut("scheduler"))
    parser.add_argument("--chunks", type=int, help=_shortcut("chunks", "M"))
    parser.add_argument("--samples", type=int, help=_shortcut("samples", "N"))
    parser.add_argument("--chunk-len", type=int, help=_shortcut("chunk_len", "C, in student tokens"))
    parser.add_argument("--alpha", type=float, help=_shortcut("alpha", "Dirichlet concentration"))
    parser.add_argument("--seed", type=int, help=_shortcut("seed", "base seed of teacher sampling"))
    parser.add_argument("--cache", help=_shortcut("teacher.cache_path", "SQLite file caching teacher answers"))
    parser.add_argument("--report", help="write a self-contained HTML report here")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per student forward batch")
    parser.add_argument(
        "--max-cost-usd",
        type=float,
        help=_shortcut(
            "teacher.max_cost_usd",
            "teacher budget: stop before the next paid call once spent; the rows finished by then are written, "
            f"marked partial (exit {EXIT_PARTIAL})",
        ),
    )
    parser.add_argument("--teacher-timeout-s", type=float, help=_shortcut("teacher.timeout_s"))
    parser.add_argument("--max-retries", type=int, help=_shortcut("teacher.max_retries"))
    parser.add_argument(
        "--skip-too-long",
        action="store_true",
        help="skip (and list) rows whose prompt + response exceed the student's context, instead of refusing",
    )


def build_config(args: argparse.Namespace):
    """OmniOPDConfig from --config, then the shortcut flags, then the omniopd.KEY=VALUE overrides (a key set
    by both a flag and an override is refused); what none sets keeps the spec's default. The plugins it names
    are built and checked (registry.check_plugins) before anything loads. Raises ConfigError."""
    from omniopd_verl import registry
    from omniopd_verl.config import OmniOPDConfig
    from omniopd_verl.config.overrides import load_config
    from omniopd_verl.errors import ConfigError

    flags: dict[str, tuple[str, Any]] = {}
    for dest, key in SHORTCUTS.items():
        value = getattr(args, dest)
        if value is not None:
            flags[f"omniopd.{key}"] = ("--" + dest.replace("_", "-"), value)
    for item in args.teacher_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--teacher-option {item!r} is invalid: allowed KEY=VALUE")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        flags[f"omniopd.teacher.options.{key}"] = (f"--teacher-option {key}", parsed)
    data = load_config(args.config, args.overrides, {"omniopd": OmniOPDConfig}, other_nodes="ignore", flags=flags)
    config = OmniOPDConfig.from_dict(data["omniopd"])
    registry.check_plugin_names(config)  # the config itself is plain data
    return config


def check_flags_and_paths(args: argparse.Namespace, config) -> None:
    """Every flag combination and path the run will need, checked before a model is loaded or a teacher
    called (a missing output folder found after the audit would waste what the teacher was paid)."""
    from omniopd_verl.errors import ConfigError
    from omniopd_verl.runtime.models import BUILTIN_MODELS

    if config.teacher.api_base and not config.teacher.model:
        from omniopd_verl.teachers.identity import public_api_base  # never echo user:pass@ or ?key=

        raise ConfigError(
            f"--teacher-api-base {public_api_base(config.teacher.api_base)} needs --teacher-model "
            "(omniopd.teacher.api_base needs omniopd.teacher.model): the model name the server "
            "serves (e.g. --teacher-model local-teacher for `python -m omniopd_verl.serving.openai_compat`)"
        )
    if args.batch_tokens < 1:
        raise ConfigError(f"--batch-tokens={args.batch_tokens} is invalid: allowed an integer >= 1")
    if args.student not in BUILTIN_MODELS and not os.path.isdir(args.student):
        raise ConfigError(
            f"--student {args.student!r} is neither a built-in model {sorted(BUILTIN_MODELS)} nor a local folder"
        )
    cache = config.teacher.cache_path
    for flag, path in (("--output", args.output), ("--report", args.report), ("--cache", cache)):
        if path is None:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ConfigError(f"{flag} {path!r}: the folder {folder} does not exist (create it first)")
        if os.path.isdir(path):
            raise ConfigError(f"{flag} {path!r} is a folder: allowed a file path")
        if not os.access(folder, os.W_OK):
            raise ConfigError(f"{flag} {path!r}: the folder {folder} is not writable")
    if os.path.abspath(args.output) == os.path.abspath(args.input):
        raise ConfigError(f"--output {args.output!r} is the --input file: it would be overwritten")
    if cache is not None:
        for flag, path in (("--output", args.output), ("--input", args.input), ("--report", args.report)):
            if path is not None and _same_file(cache, path):
                raise ConfigError(
                    f"--cache {cache!r} is the {flag} file: the cache is a SQLite file of its own; "
                    "allowed a different path"
                )


def _same_file(a: str, b: str) -> bool:
    """One file under two spellings (relative, absolute, or a link)?"""
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet: not the same file
        return False


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(value: Any, where: str, key: str) -> None:
    """Refuse a lone surrogate (valid JSON "\\ud800", but no text can hold half a UTF-16 pair)."""
    from omniopd_verl.errors import ConfigError

    strings = [value] if isinstance(value, str) else [v for m in value for v in m.values() if isinstance(v, str)]
    for text in strings:
        bad = _SURROGATE.search(text)
        if bad:
            raise ConfigError(
                f"{where}: {key} holds a lone surrogate \\u{ord(bad.group()):04x} at character {bad.start()}: "
                "not valid Unicode text (half of a UTF-16 pair)"
            )


INPUT_KEYS = ("id", "prompt", "response", "teacher_context")


def read_input(path: str) -> list[dict[str, Any]]:
    """Validated input rows; a bad line raises ConfigError naming the file, the line and the key."""
    from omniopd_verl.data.jsonl import iter_jsonl_objects
    from omniopd_verl.errors import ConfigError

    rows, seen = [], set()
    for lineno, row in iter_jsonl_objects(path, flag="--input"):
        where = f"{path} line {lineno}"
        unknown = sorted(set(row) - set(INPUT_KEYS))
        if unknown:  # a misspelt teacher_context would otherwise be ignored, and the audit run without it
            raise ConfigError(
                f"{where} has unknown keys {', '.join(map(repr, unknown))}: allowed keys {', '.join(INPUT_KEYS)}"
            )
        for key in ("id", "prompt", "response"):
            if key not in row:
                raise ConfigError(f"{where} has no {key!r}: allowed keys id, prompt, response, teacher_context")
        if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
            raise ConfigError(f"{where}: id={row['id']!r} is invalid: allowed a string or an integer")
        uid = str(row["id"])
        if uid in seen:
            raise ConfigError(f"{where}: id={uid!r} appears twice; ids must be unique")
        seen.add(uid)
        prompt = row["prompt"]
        ok_messages = isinstance(prompt, list) and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt
        )
        if not (isinstance(prompt, str) or (ok_messages and prompt)):
            raise ConfigError(
                f"{where}: prompt is invalid: allowed a string or a non-empty list of "
                '{"role": ..., "content": ...} messages'
            )
        if not isinstance(row["response"], str):
            raise ConfigError(f"{where}: response={row['response']!r} is invalid: allowed a string")
        context = row.get("teacher_context")
        if context is not None and not isinstance(context, str):
            raise ConfigError(f"{where}: teacher_context is invalid: allowed a string or null")
        for key in ("id", "prompt", "response", "teacher_context"):
            if row.get(key) is not None and not isinstance(row[key], int):
                _check_text(row[key], where, key)
        rows.append(
            {
                "id": uid,
                "prompt": prompt,
                "response": row["response"],
                "teacher_context": context,
                "line": lineno,
            }
        )
    if not rows:
        raise ConfigError(f"--input {path!r} has no rows")
    return rows


@dataclass
class PreparedRow:
    """An input row tokenized exactly as the student scores it (student.encode_pair)."""

    row: dict[str, Any]
    prompt_text: str
    prompt_ids: list[int]
    response_ids: list[int]


@dataclass
class AuditOutcome:
    """What the audit produced: the completed rows in input order, and why it stopped early, if it did."""

    responses: list  # StudentResponse of every completed row
    audits: list  # ResponseAudit, aligned with responses
    metrics: dict[str, float]
    seconds_student: float
    seconds_total: float
    stopped: str | None = None  # the budget-stop message when the teacher's budget ended the run


def load_student_tokenizer(student: str):
    """(tokenizer, context limit) of the student, without reading its weights."""
    from omniopd_verl.runtime.models import load_model_config, load_tokenizer
    from omniopd_verl.runtime.scoring import context_limit

    tokenizer = load_tokenizer(student)
    return tokenizer, context_limit(load_model_config(student), tokenizer)


def prepare_rows(tokenizer, limit, rows, *, skip_too_long: bool) -> tuple[list[PreparedRow], list[tuple[str, str]]]:
    """Tokenize every row; one beyond the student's context is refused (or skipped with --skip-too-long)."""
    from omniopd_verl.errors import ConfigError
    from omniopd_verl.runtime.scoring import encode_pair, too_long

    prepared, skipped = [], []
    for row in rows:
        where = f"--input line {row['line']} (id={row['id']!r})"
        try:
            prompt_text, prompt_ids, response_ids = encode_pair(tokenizer, row["prompt"], row["response"])
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if not prompt_ids:
            raise ConfigError(f"{where}: the prompt has no tokens; the first response token needs a context")
        why = too_long(prompt_ids, response_ids, limit)
        if why and not skip_too_long:
            raise ConfigError(f"{where}: {why}; shorten it, or pass --skip-too-long to skip such rows")
        if why:
            skipped.append((row["id"], why))
            continue
        prepared.append(PreparedRow(row, prompt_text, prompt_ids, response_ids))
    if not prepared:
        raise ConfigError(f"every row of --input is beyond the student's context of {limit} tokens")
    return prepared, skipped


async def build_teacher_and_audit(args, config, tokenizer, prepared: list[PreparedRow]) -> AuditOutcome:
    """Build the Auditor (teacher, similarity, scheduler) first, so a bad teacher setting fails before the
    student's weights load; then score and audit."""
    from omniopd_verl.audit.auditor import Auditor
    from omniopd_verl.runtime.models import load_causal_lm

    auditor = Auditor(config, tokenizer)  # a bad teacher setting fails here, in one line
    _print_forecast(config, prepared)  # before the first call
    try:
        model, _ = load_causal_lm(args.student)
        return await score_and_audit(auditor, model, tokenizer, prepared, args.batch_tokens)
    finally:
        await auditor.aclose()


def _print_forecast(config, prepared: list[PreparedRow]) -> None:
    """Requests, tokens and $ of this audit before its first call (teachers/forecast.py), on stderr."""
    from omniopd_verl import registry
    from omniopd_verl.teachers.forecast import forecast

    caps = getattr(registry.load("teachers", config.teacher.name), "capabilities", None)
    supports_n = getattr(caps, "supports_n", True)
    result = forecast(
        config,
        prompts_per_step=len(prepared),
        rollout_n=1,
        prompt_tokens=round(sum(len(p.prompt_ids) for p in prepared) / len(prepared)),
        response_tokens=round(sum(len(p.response_ids) for p in prepared) / len(prepared)),
        steps=1,
        supports_n=supports_n if isinstance(supports_n, bool) else True,
        max_tokens_factor=float(getattr(caps, "max_tokens_factor", 1.25) or 1.25),
        raw_completion=getattr(caps, "raw_completion", False) is True,
    )
    for line in result.lines():
        print(f"omniopd-verl audit: {line}".replace(" per step", " for the input"), file=sys.stderr)


def _student_response(p: PreparedRow, logprobs_T, entropy_T):
    from omniopd_verl.audit.types import StudentResponse

    prompt = p.row["prompt"]
    return StudentResponse(
        uid=p.row["id"],
        prompt_text=p.prompt_text,
        response_ids=p.response_ids,
        logprobs_T=logprobs_T,
        entropy_T=entropy_T,
        entropy_source="exact",
        prompt_messages=prompt if isinstance(prompt, list) else None,
        teacher_context=p.row["teacher_context"],
    )


async def score_and_audit(auditor, model, tokenizer, prepared: list[PreparedRow], batch_tokens: int) -> AuditOutcome:
    """Score rows teacher-forced in steps of STUDENT_ROWS_PER_STEP (in a thread) while the audits of the rows
    already scored run. A teacher budget stop ends the run: answers in flight still finish (no new paid
    call can start), and every row completed by then is kept."""
    import asyncio

    from tqdm import tqdm

    from omniopd_verl.runtime.scoring import score_token_ids
    from omniopd_verl.teachers import TeacherBudgetExceeded

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    responses, tasks, done = [], [], {}
    seconds_student, stopped = 0.0, None
    t_start = time.perf_counter()
    with (
        tqdm(total=len(prepared), desc="student", unit="resp", file=sys.stderr, position=0) as student_bar,
        tqdm(total=len(prepared), desc="audit", unit="resp", file=sys.stderr, position=1) as audit_bar,
    ):

        async def one(r) -> None:
            done[r.uid] = await auditor.audit_one(r)
            audit_bar.update(1)

        try:
            for lo in range(0, len(prepared), STUDENT_ROWS_PER_STEP):
                part = prepared[lo : lo + STUDENT_ROWS_PER_STEP]
                t0 = time.perf_counter()
                scored = await asyncio.to_thread(
                    score_token_ids,
                    model,
                    [p.prompt_ids for p in part],
                    [p.response_ids for p in part],
                    pad_token_id=pad,
                    max_batch_tokens=batch_tokens,
                )
                seconds_student += time.perf_counter() - t0
                for p, (logprobs_T, entropy_T) in zip(part, scored, strict=True):
                    responses.append(_student_response(p, logprobs_T, entropy_T))
                    tasks.append(asyncio.ensure_future(one(responses[-1])))
                student_bar.update(len(part))
                for t in tasks:  # surface a failed audit now, not after scoring everything
                    if t.done() and t.exception() is not None:
                        raise t.exception()
            await asyncio.gather(*tasks)
        except TeacherBudgetExceeded as exc:
            stopped = str(exc)
            await asyncio.gather(*tasks, return_exceptions=True)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
    completed = [r for r in responses if r.uid in done]
    return AuditOutcome(
        responses=completed,
        audits=[done[r.uid] for r in completed],
        metrics=auditor.metrics(),
        seconds_student=seconds_student,
        seconds_total=time.perf_counter() - t_start,
        stopped=stopped,
    )


def write_outputs(args, config, tokenizer, prepared, skipped, outcome: AuditOutcome) -> None:
    """OUT.jsonl (+ a `partial` trailer line after a budget stop), the HTML report, the stderr summary."""
    records = [_record(a, config) for a in outcome.audits]
    written = {r["id"] for r in records}
    partial = None
    if outcome.stopped:
        partial = {
            "partial": True,
            "reason": outcome.stopped,
            "rows_written": len(records),
            "rows_total": len(prepared),
            "missing_ids": [p.row["id"] for p in prepared if p.row["id"] not in written],
            # what the whole run made and paid for (the teacher's meter), written rows or not
            "teacher_calls": int(outcome.metrics.get("teacher/calls", 0)),
            "teacher_cost_usd": outcome.metrics.get("teacher/cost_usd", 0.0),
        }
    with open(args.output, "w", encoding="utf-8") as out:
        for rec in records:
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
        if partial:
            out.write(json.dumps(partial, ensure_ascii=False) + "\n")
    summary = _summary(records, outcome.metrics, config, outcome.seconds_student, outcome.seconds_total)
    if skipped:
        summary["skipped (too long)"] = f"{len(skipped)} row(s) beyond the student's context: " + ", ".join(
            repr(uid) for uid, _ in skipped
        )
    if partial:
        summary["PARTIAL OUTPUT"] = (
            f"{len(records)} of {len(prepared)} rows written; the teacher budget stopped the run "
            "(the last line of the output says which rows are missing)"
        )
    if args.report:
        by_id = {p.row["id"]: p.row for p in prepared}
        _write_report(
            args.report, tokenizer, [by_id[r.uid] for r in outcome.responses], outcome.responses, records, summary
        )
    width = max(len(k) for k in summary)
    print("omniopd-verl audit summary", file=sys.stderr)
    for key, value in summary.items():
        print(f"  {key:<{width}}  {value}", file=sys.stderr)
    print(
        f"  {'output':<{width}}  {args.output}" + (f"  report: {args.report}" if args.report else ""), file=sys.stderr
    )
    if partial:
        print(
            f"omniopd-verl audit: PARTIAL OUTPUT: {len(records)} of {len(prepared)} rows written to {args.output}. "
            f"{outcome.stopped}",
            file=sys.stderr,
        )


def run(args: argparse.Namespace) -> int:
    """Check every flag, path and input line, then audit. Nothing is loaded or paid for before the checks."""
    from omniopd_verl.errors import ConfigError, OmniOPDError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        config = build_config(args)
        check_flags_and_paths(args, config)
        rows = read_input(args.input)
        from omniopd_verl import registry

        registry.check_plugins(config)  # option names and values, the key's variable: before anything loads
        return _audit(args, config, rows)
    except ConfigError as exc:
        print(f"omniopd-verl audit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OmniOPDError as exc:
        print(f"omniopd-verl audit: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _audit(args, config, rows) -> int:
    """check inputs against the student -> build the teacher -> score the students -> audit -> write."""
    import asyncio

    tokenizer, limit = load_student_tokenizer(args.student)
    prepared, skipped = prepare_rows(tokenizer, limit, rows, skip_too_long=args.skip_too_long)
    outcome = asyncio.run(build_teacher_and_audit(args, config, tokenizer, prepared))
    write_outputs(args, config, tokenizer, prepared, skipped, outcome)
    return EXIT_PARTIAL if outcome.stopped else EXIT_OK


def _record(audit, config) -> dict[str, Any]:
    from omniopd_verl.audit.records import audit_record  # the one serializer (the local engine's too)

    return audit_record(audit, config)


def _summary(records, metrics, config, t_student, t_audit) -> dict[str, str]:
    def total(key):
        # the teacher's own meter: every call made and paid for, including those of rows a budget stop left
        # unwritten; the per-row blocks are the fallback for a plugin that reports no metrics
        metered = metrics.get(f"teacher/{key}")
        return metered if metered is not None else sum(r["teacher"].get(key, 0) for r in records)

    chunks = [c for r in records for c in r["chunks"]]

    def stat(name):
        if not chunks:
            return "-"
        return f"mean {metrics[f'audit/{name}_mean']:.3f}  min {metrics[f'audit/{name}_min']:.3f}  max {metrics[f'audit/{name}_max']:.3f}"

    return {
        "responses": str(len(records)),
        "chunks audited": f"{len(chunks)} ({metrics['audit/chunks_per_response']:.2f}/response, "
        f"{100 * metrics['audit/token_fraction']:.1f}% of tokens)",
        "rows without audit": str(int(metrics["audit/rows_without_audit"])),
        "anchors dropped": str(int(metrics["audit/anchors_dropped"])),
        "pi_hat (posterior mean)": stat("pi_hat"),
        "k_sem / N": stat("k_sem_frac"),
        "pi_bar (prior mean)": stat("pi_bar"),
        "k_sem inside (5%,95%)": f"{100 * metrics['audit/k_sem_inside_frac']:.1f}% of chunks",
        "config": f"M={config.chunks} N={config.samples} C={config.chunk_len} alpha={config.alpha} "
        f"scheduler={config.scheduler} similarity={config.similarity} teacher={config.teacher.name}",
        "teacher": f"requests {sum(int(r['teacher'].get('requests', 0)) for r in records)} (one per anchor), "
        f"HTTP calls {int(metrics.get('teacher/calls', 0))} (retries included), retries {int(total('retries'))}, failures {int(total('failures'))}, "
        f"cache hits {int(total('cache_hits'))}, tokens {int(total('prompt_tokens'))} in / "
        f"{int(total('completion_tokens'))} out, cost ${total('cost_usd'):.4f}",
        "time": f"{t_audit:.1f}s for scoring and audit together (student scoring {t_student:.1f}s, "
        f"similarity {metrics.get('similarity/seconds', 0.0):.1f}s)",
    }


def _write_report(path, tokenizer, rows, responses, records, summary) -> None:
    from omniopd_verl.audit.report import ReportItem, render_report
    from omniopd_verl.audit.text import ResponseText

    items = []
    for row, resp, rec in zip(rows, responses, records, strict=True):
        bounds, kinds = [0], []
        for k, c in enumerate(rec["chunks"]):
            if c["start"] > bounds[-1]:
                bounds.append(c["start"])
                kinds.append(None)
            bounds.append(c["end"])
            kinds.append(k)
        if bounds[-1] < len(resp.response_ids):
            bounds.append(len(resp.response_ids))
            kinds.append(None)
        texts = ResponseText(tokenizer, resp.response_ids).segments(bounds)
        items.append(ReportItem(row["id"], resp.prompt_text, list(zip(texts, kinds, strict=True)), rec))
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_report(items, summary=summary))
