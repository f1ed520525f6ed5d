"""The audit layer: finished student responses -> chunk weights. Knows nothing about verl."""

from omniopd_verl.audit.types import ChunkAudit, ResponseAudit, StudentResponse

__all__ = ["ChunkAudit", "ResponseAudit", "StudentResponse"]
