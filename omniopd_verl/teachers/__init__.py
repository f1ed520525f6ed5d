"""Teachers (entry-point group `omniopd_verl.teachers`): sample text continuations of a prefix.

A teacher plugin writes only the raw call (`omniopd_verl.protocols.TeacherPlugin`); the teacher
library (`library.Teacher`) that `registry.create_teacher` wraps around every plugin does the rest:
prompt rendering (`prompts`), token budgets, the SQLite cache (`cache`), accounting and the budget
(`accounting`), concurrency, rate limits, retries and timeouts (`reliability`), exactly-N validation,
micro-batching, and secret redaction (`secrets`). Built-ins: `litellm`, `openai_completions`,
`transformers`, `vllm`, each importing its heavy library lazily. See docs/teachers.md.
"""

from omniopd_verl.protocols import (
    RawAnswer,
    RawRequest,
    RawSample,
    TeacherBackend,
    TeacherCapabilities,
    TeacherPlugin,
    TeacherRequest,
    TeacherResult,
)
from omniopd_verl.teachers.accounting import TeacherBudgetExceeded
from omniopd_verl.teachers.ledger import TeacherRequestRejected, TeacherRunStopped
from omniopd_verl.teachers.reliability import TeacherAuthError, TransientTeacherError
from omniopd_verl.teachers.secrets import read_api_key

__all__ = [
    "RawAnswer",
    "RawRequest",
    "RawSample",
    "TeacherAuthError",
    "TeacherBackend",
    "TeacherBudgetExceeded",
    "TeacherCapabilities",
    "TeacherPlugin",
    "TeacherRequest",
    "TeacherRequestRejected",
    "TeacherResult",
    "TeacherRunStopped",
    "TransientTeacherError",
    "read_api_key",
]
