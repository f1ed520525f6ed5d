"""`omniopd-verl audit`: see the teacher's signal on finished responses before spending GPU hours.

Reads IN.jsonl lines {"id", "prompt", "response"} (prompt: a string used as is, or chat messages put
through the student's chat template; optional "teacher_context": privileged text for the teacher
only), runs the student teacher-forced for exact entropies and log-probs, audits every response with
the configured teacher / similarity / scheduler (the same Auditor both training engines use), and
writes OUT.jsonl with one line per input, in input order:
    {"id", "entropy_source", "similarity", "scheduler", "response_len", "anchors_dropped",
     "chunks": [{"start", "end", "entropy", "student_text", "teacher_texts", "similarities",
                 "k_sem", "k_sem_frac", "pi_bar", "pi_hat"}, ...],
     "teacher": {"calls", "retries", "failures", "cache_hits", "prompt_tokens", "completion_tokens",
                 "cost_usd", "seconds"}}
A summary goes to stderr; --report writes a self-contained HTML page. Exit codes: 0 ok, 2 bad input
or configuration (the message names the key or line), 1 the audit itself failed (e.g. the teacher).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

HELP = "audit finished responses against a text-only teacher: chunk weights as JSONL (+ an HTML report)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help='JSONL with {"id", "prompt", "response"} per line')
    parser.add_argument("--output", required=True, help="JSONL to write, one audited response per line")
    parser.add_argument("--student", required=True, help="local transformers folder, or smollm2-135m-instruct")
    parser.add_argument("--teacher", required=True, help="teacher plugin name (see `omniopd-verl plugins`)")
    parser.add_argument("--teacher-model", help="model name as the teacher backend knows it (or a local path)")
    parser.add_argument("--teacher-api-base", help="base URL of an HTTP teacher, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--teacher-api-key-env", help="environment variable holding the teacher's API key")
    parser.add_argument(
        "--teacher-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backend-specific teacher option (VALUE parsed as JSON when it can be); repeatable",
    )
    parser.add_argument("--max-concurrency", type=int, help="teacher requests in flight at once")
    parser.add_argument("--on-teacher-failure", choices=("error", "drop"), help="after the last retry (default error)")
    parser.add_argument("--similarity", help="similarity plugin (default embedding)")
    parser.add_argument("--scheduler", help="anchor scheduler plugin (default peak_entropy)")
    parser.add_argument("--chunks", type=int, help="M: chunks audited per response (default 10)")
    parser.add_argument("--samples", type=int, help="N: teacher samples per chunk (default 10)")
    parser.add_argument("--chunk-len", type=int, help="C: chunk length in student tokens (default 50)")
    parser.add_argument("--alpha", type=float, help="Dirichlet concentration (default 1.0)")
    parser.add_argument("--seed", type=int, help="base seed for teacher sampling (default 0)")
    parser.add_argument("--cache", help="SQLite file caching teacher answers across runs")
    parser.add_argument("--report", help="write a self-contained HTML report here")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per student forward batch")


def build_config(args: argparse.Namespace):
    """OmniOPDConfig from the flags; unset flags keep the spec's defaults. Raises ConfigError."""
    from omniopd_verl.config import OmniOPDConfig
    from omniopd_verl.errors import ConfigError

    options: dict[str, Any] = {}
    for item in args.teacher_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--teacher-option {item!r} is invalid: allowed KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    teacher: dict[str, Any] = {"name": args.teacher, "options": options}
    for key, value in (
        ("model", args.teacher_model),
        ("api_base", args.teacher_api_base),
        ("api_key_env", args.teacher_api_key_env),
        ("cache_path", args.cache),
        ("max_concurrency", args.max_concurrency),
        ("on_failure", args.on_teacher_failure),
    ):
        if value is not None:
            teacher[key] = value
    data: dict[str, Any] = {"teacher": teacher}
    for key in ("chunks", "samples", "chunk_len", "alpha", "seed", "similarity", "scheduler"):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    return OmniOPDConfig.from_dict(data)


def read_input(path: str) -> list[dict[str, Any]]:
    """Validated input rows; a bad line raises ConfigError naming the file, the line and the key."""
    from omniopd_verl.errors import ConfigError

    rows, seen = [], set()
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--input {path!r} cannot be read: {exc.strerror}") from None
    with handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path} line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where} is not JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{where} must be a JSON object with id, prompt, response")
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
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in prompt
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
            rows.append({"id": uid, "prompt": prompt, "response": row["response"], "teacher_context": context})
    if not rows:
        raise ConfigError(f"--input {path!r} has no rows")
    return rows


def run(args: argparse.Namespace) -> int:
    from omniopd_verl.errors import ConfigError, OmniOPDError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        config = build_config(args)
        rows = read_input(args.input)
        if args.batch_tokens < 1:
            raise ConfigError(f"--batch-tokens={args.batch_tokens} is invalid: allowed an integer >= 1")
    except ConfigError as exc:
        print(f"omniopd-verl audit: error: {exc}", file=sys.stderr)
        return 2
    try:
        return _audit(args, config, rows)
    except ConfigError as exc:
        print(f"omniopd-verl audit: error: {exc}", file=sys.stderr)
        return 2
    except OmniOPDError as exc:
        print(f"omniopd-verl audit: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _audit(args, config, rows) -> int:
    import asyncio

    from tqdm import tqdm

    from omniopd_verl.audit.auditor import Auditor
    from omniopd_verl.audit.types import StudentResponse
    from omniopd_verl.models import load_causal_lm
    from omniopd_verl.student import score_responses

    model, tokenizer = load_causal_lm(args.student)
    step = 16  # rows per student scoring call; their audits start while the next rows are scored

    async def pipeline():
        # the teacher is built before any scoring, so a bad teacher setting fails at once
        auditor = Auditor(config, tokenizer)
        responses: list[StudentResponse] = []
        results: dict[str, Any] = {}
        tasks: list[asyncio.Future] = []
        seconds_student = 0.0
        try:
            with (
                tqdm(total=len(rows), desc="student", unit="resp", file=sys.stderr, position=0) as student_bar,
                tqdm(total=len(rows), desc="audit", unit="resp", file=sys.stderr, position=1) as audit_bar,
            ):

                async def one(r: StudentResponse) -> None:
                    results[r.uid] = await auditor.audit_one(r)
                    audit_bar.update(1)

                for lo in range(0, len(rows), step):
                    part = rows[lo : lo + step]
                    t0 = time.perf_counter()
                    scored = await asyncio.to_thread(
                        score_responses,
                        model,
                        tokenizer,
                        [r["prompt"] for r in part],
                        [r["response"] for r in part],
                        max_batch_tokens=args.batch_tokens,
                    )
                    seconds_student += time.perf_counter() - t0
                    for row, s in zip(part, scored, strict=True):
                        r = StudentResponse(
                            uid=row["id"],
                            prompt_text=s.prompt_text,
                            response_ids=s.response_ids,
                            logprobs_T=s.logprobs_T,
                            entropy_T=s.entropy_T,
                            entropy_source="exact",
                            prompt_messages=row["prompt"] if isinstance(row["prompt"], list) else None,
                            teacher_context=row["teacher_context"],
                        )
                        responses.append(r)
                        tasks.append(asyncio.ensure_future(one(r)))
                    student_bar.update(len(part))
                    for t in tasks:  # surface a failed audit now, not after scoring everything
                        if t.done() and t.exception() is not None:
                            raise t.exception()
                await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            await auditor.aclose()
        return responses, [results[r.uid] for r in responses], auditor.metrics(), seconds_student

    t1 = time.perf_counter()
    responses, audits, metrics, t_student = asyncio.run(pipeline())
    t_audit = time.perf_counter() - t1

    records = [_record(a, config) for a in audits]
    with open(args.output, "w", encoding="utf-8") as out:
        for rec in records:
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
    summary = _summary(records, metrics, config, t_student, t_audit)
    if args.report:
        _write_report(args.report, tokenizer, rows, responses, records, summary)
    width = max(len(k) for k in summary)
    print("omniopd-verl audit summary", file=sys.stderr)
    for key, value in summary.items():
        print(f"  {key:<{width}}  {value}", file=sys.stderr)
    print(
        f"  {'output':<{width}}  {args.output}" + (f"  report: {args.report}" if args.report else ""), file=sys.stderr
    )
    return 0


def _record(audit, config) -> dict[str, Any]:
    counts = ("calls", "retries", "failures", "cache_hits", "prompt_tokens", "completion_tokens")
    teacher = {k: (int(v) if k in counts else v) for k, v in audit.teacher.items()}
    return {
        "id": audit.uid,
        "entropy_source": audit.entropy_source,
        "similarity": config.similarity,
        "scheduler": config.scheduler,
        "response_len": audit.response_len,
        "anchors_dropped": audit.anchors_dropped,
        "chunks": [
            {
                "start": c.start,
                "end": c.end,
                "entropy": c.entropy,
                "student_text": c.student_text,
                "teacher_texts": c.teacher_texts,
                "similarities": c.similarities,
                "k_sem": c.k_sem,
                "k_sem_frac": c.k_sem_frac,
                "pi_bar": c.pi_bar,
                "pi_hat": c.pi_hat,
            }
            for c in audit.chunks
        ],
        "teacher": teacher,
    }


def _summary(records, metrics, config, t_student, t_audit) -> dict[str, str]:
    def total(key):
        return sum(r["teacher"].get(key, 0) for r in records)

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
        "teacher": f"calls {int(total('calls'))}, retries {int(total('retries'))}, failures {int(total('failures'))}, "
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
