"""The teacher protocol's data types (ALGORITHM.md step 3), re-exported from `omniopd_verl.protocols`.

Kept as an import path for existing code: `TeacherRequest`, `TeacherResult`, `TeacherCapabilities`,
`TeacherBackend` (what engines call), `TeacherPlugin`, `RawRequest`, `RawAnswer`, `RawSample` (what a
plugin writes). See docs/teachers.md.
"""

from omniopd_verl.protocols import (
    STOP_REASONS,
    RawAnswer,
    RawRequest,
    RawSample,
    TeacherBackend,
    TeacherCapabilities,
    TeacherPlugin,
    TeacherRequest,
    TeacherResult,
)

__all__ = [
    "STOP_REASONS",
    "RawAnswer",
    "RawRequest",
    "RawSample",
    "TeacherBackend",
    "TeacherCapabilities",
    "TeacherPlugin",
    "TeacherRequest",
    "TeacherResult",
]
