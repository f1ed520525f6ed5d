"""Test tools, not runtime code: a fault-injecting teacher server, a recording one (the real server that
keeps its requests, which the runtime server does not) and a model-free scripted generator.

They serve the project's own tests and benchmarks, and third-party plugin authors who want to test a
teacher against a real socket: `from omniopd_verl.testing import Fault, ScriptedGenerator, serve_fault_server`.
The real CPU teacher server is `omniopd_verl.serving.openai_compat`.
"""

from omniopd_verl.serving.openai_compat import key_digest
from omniopd_verl.testing.fault_server import (
    FAULT_KINDS,
    Fault,
    FaultServer,
    RecordingServer,
    ScriptedGenerator,
    serve_fault_server,
    serve_recording_server,
)

__all__ = [
    "FAULT_KINDS",
    "Fault",
    "FaultServer",
    "RecordingServer",
    "ScriptedGenerator",
    "key_digest",
    "serve_fault_server",
    "serve_recording_server",
]
