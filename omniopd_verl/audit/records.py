"""The one serializer of an audit: `audit_record(audit, config)` is a JSONL line of `omniopd-verl audit`
and a record of the local engine's audits files alike; `audit_from_record` reads it back.

    {"id", "entropy_source", "similarity", "scheduler", "response_len", "anchors_dropped",
     "chunks": [{"start", "end", "entropy", "student_text", "teacher_texts", "similarities",
                 "k_sem", "k_sem_frac", "pi_bar", "pi_hat"}, ...],
     "teacher": {"calls", "retries", "failures", "cache_hits", "prompt_tokens", "completion_tokens",
                 "cost_usd", "seconds"}}

Keys are the dataclass fields (ChunkAudit, ResponseAudit), except "id" (ResponseAudit.uid: the input
row's id) and the run's "similarity" / "scheduler" names; counts in "teacher" are integers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omniopd_verl.audit.types import ChunkAudit, ResponseAudit

TEACHER_COUNTS = ("calls", "retries", "failures", "cache_hits", "prompt_tokens", "completion_tokens")


def audit_record(audit: ResponseAudit, config: Any = None) -> dict[str, Any]:
    """One audit as a JSON-able dict (the shape above); `config` (an OmniOPDConfig) names similarity/scheduler."""
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
                "student_text": c.student_text,
                "teacher_texts": list(c.teacher_texts),
                "similarities": list(c.similarities),
                "k_sem": c.k_sem,
                "k_sem_frac": c.k_sem_frac,
                "pi_bar": c.pi_bar,
                "pi_hat": c.pi_hat,
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
        teacher={k: float(v) for k, v in (record.get("teacher") or {}).items()},
    )
