"""The run's teacher ledger: one account of budget, rate limits, health, metrics and cache per run.

`core.LedgerCore` holds the rules (one implementation); `client.InProcessLedger` places it in this
process (audit CLI, local engine), `actor.ensure_run_ledger` in a named Ray actor shared by verl's
reward workers; both speak `client.LedgerClient`, the protocol the teacher library calls.
See docs/teachers.md ("The run's ledger") and docs/verl.md ("Scaling the teacher").
"""

from omniopd_verl.teachers.ledger.client import InProcessLedger, LedgerClient, RayLedger
from omniopd_verl.teachers.ledger.core import (
    LedgerCore,
    LedgerSettings,
    TeacherRequestRejected,
    TeacherRunStopped,
)

__all__ = [
    "InProcessLedger",
    "LedgerClient",
    "LedgerCore",
    "LedgerSettings",
    "RayLedger",
    "TeacherRequestRejected",
    "TeacherRunStopped",
]
