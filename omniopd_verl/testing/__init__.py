"""Test tools, not runtime code: a fault-injecting teacher server and a model-free scripted generator.

They serve the project's own tests and benchmarks, and third-party plugin authors who want to test a
teacher against a real socket: `from omniopd_verl.testing import Fault, ScriptedGenerator, serve_fault_server`.
The real CPU teacher server is `omniopd_verl.serving.openai_compat`.
"""

from omniopd_verl.testing.fault_server import FAULT_KINDS, Fault, FaultServer, ScriptedGenerator, serve_fault_server

__all__ = ["FAULT_KINDS", "Fault", "FaultServer", "ScriptedGenerator", "serve_fault_server"]
