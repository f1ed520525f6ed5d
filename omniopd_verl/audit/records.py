"""The one serializer of an audit: `audit_record(audit, config)` is a JSONL line of `omniopd-verl audit`
and a record of the local engine's audits files alike; `audit_from_record` reads it back.

    {"id", "entropy_source", "similarity", "scheduler", "response_len", "anchors_dropped",
     "chunks": [{"start", "end", "entropy", "student_text", "teacher_texts", "similarities",
                 "k_sem", "k_sem_frac", "pi_bar", "pi_hat"}, ...],
     "teacher": {"requests", "retries", "failures", "cache_hits", "prompt_tokens", "completion_tokens",
                 "cost_usd", "seconds"}}

Keys are the dataclass fields (ChunkAudit, ResponseAudit), except "id" (ResponseAudit.uid: the input
row's id) and the run's "similarity" / "scheduler" names; counts in "teacher" are integers. The row's
"teacher" block counts its *requests* (one per audited anchor: N samples of one prefix), never HTTP
calls: the run's `teacher/calls` (the teacher's meter) counts raw calls, retries included (docs/audit.md).
The verl reward manager logs the same record without the texts (`texts=False`), per trajectory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omniopd_verl.audit.types import ChunkAudit, ResponseAudit

TEACHER_COUNTS = ("requests", "retries", "failures", "cache_hits", "prompt_tokens", "completion_tokens")


def audit_record(audit: ResponseAudit, config: Any = None, *, texts: bool = True) -> dict[str, Any]:
    """One audit as a JSON-able dict (the shape above); `config` (an OmniOPDConfig) names similarity/scheduler.
    `texts=False` leaves out "student_text" and "teacher_texts" (the verl reward manager's per-trajectory log,
    which travels with the batch)."""
    teacher = {k: (int(v) if k in TEACHER_COUNTS else v) for k, v in audit.teacher.items()}
    return {
        "id": audit.uid,
        "entropy_source": audit.entropy_source,
        "similarity": getattr(config, "similarity", None),
        "scheduler": getattr(config, "scheduler", None),
        "response_len": audit.response_len,
        "anchors_dropped": audit.anchors_dropped,
        "chunks": [
            {
                "start": c.start,
                "end": c.end,
                "entropy": c.entropy,
                **({"student_text": c.student_text, "teacher_texts": list(c.teacher_texts)} if texts else {}),
                "similarities": [float(x) for x in c.similarities],
                "k_sem": float(c.k_sem),
                "k_sem_frac": float(c.k_sem_frac),
                "pi_bar": float(c.pi_bar),
                "pi_hat": float(c.pi_hat),
            }
            for c in audit.chunks
        ],
        "teacher": teacher,
    }


def audit_from_record(record: Mapping[str, Any]) -> ResponseAudit:
    """The ResponseAudit a record was written from (k_sem_frac is derived, not read)."""
    chunks = [
        ChunkAudit(
            start=c["start"],
            end=c["end"],
            entropy=c.get("entropy"),
            student_text=c["student_text"],
            teacher_texts=list(c["teacher_texts"]),
            similarities=list(c["similarities"]),
            k_sem=c["k_sem"],
            pi_bar=c["pi_bar"],
            pi_hat=c["pi_hat"],
        )
        for c in record.get("chunks", [])
    ]
    return ResponseAudit(
        uid=record["id"],
        response_len=record["response_len"],
        chunks=chunks,
        anchors_dropped=record.get("anchors_dropped", 0),
        entropy_source=record.get("entropy_source", "exact"),
        teacher=_teacher_block(record.get("teacher") or {}),
    )


def _teacher_block(block: Mapping[str, Any]) -> dict[str, float]:
    """A record's "teacher" block; files written before the per-row count was named "requests" said "calls"."""
    out = {k: float(v) for k, v in block.items()}
    if "calls" in out and "requests" not in out:
        out["requests"] = out.pop("calls")
    return out
