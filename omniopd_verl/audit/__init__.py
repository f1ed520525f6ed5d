"""The audit layer: finished student responses -> chunk weights. Knows nothing about verl.

`Auditor` runs the pipeline (anchors, teacher, similarity, smoothing); `chunk_advantages` and
`audits_to_token_credit` turn its output into the tensors both engines train on.
"""

from omniopd_verl.audit.types import ChunkAudit, ResponseAudit, StudentResponse

__all__ = [
    "Auditor",
    "ChunkAudit",
    "ResponseAudit",
    "StudentResponse",
    "TeacherFailureError",
    "audit_from_record",
    "audit_record",
    "audits_to_token_credit",
    "chunk_advantages",
    "trim_to_student_tokens",
]


def __getattr__(name: str):
    # Lazy: `from omniopd_verl.audit import StudentResponse` must not import the registry/teacher stack.
    if name == "stable_seed":  # kept for plugin authors who seed teacher requests as the Auditor does
        from omniopd_verl.core.seeds import stable_seed

        return stable_seed
    if name in ("Auditor", "TeacherFailureError"):
        from omniopd_verl.audit import auditor

        return getattr(auditor, name)
    if name in ("audits_to_token_credit", "chunk_advantages"):
        from omniopd_verl.audit import credit

        return getattr(credit, name)
    if name in ("audit_record", "audit_from_record"):
        from omniopd_verl.audit import records

        return getattr(records, name)
    if name == "trim_to_student_tokens":
        from omniopd_verl.audit.text import trim_to_student_tokens

        return trim_to_student_tokens
    raise AttributeError(f"module 'omniopd_verl.audit' has no attribute {name!r}")
