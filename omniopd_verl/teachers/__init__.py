"""Teacher backends (entry-point group `omniopd_verl.teachers`): sample text continuations of a prefix.

Each backend module imports its heavy library (litellm, transformers, vllm) lazily. Shared machinery:
`reliability` (retries, rate limits, timeouts, validation for HTTP teachers), `cache` (SQLite,
content-addressed), `accounting` (metrics and the hard budget). See docs/teachers.md.
"""

from omniopd_verl.teachers.accounting import TeacherBudgetExceeded
from omniopd_verl.teachers.base import TeacherBackend, TeacherCapabilities, TeacherRequest, TeacherResult

__all__ = ["TeacherBackend", "TeacherBudgetExceeded", "TeacherCapabilities", "TeacherRequest", "TeacherResult"]
