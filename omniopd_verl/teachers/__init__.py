"""Teacher backends (entry-point group `omniopd_verl.teachers`): sample text continuations of a prefix.

Each backend module imports its heavy library (litellm, transformers, vllm) lazily.
"""

from omniopd_verl.teachers.base import TeacherBackend, TeacherCapabilities, TeacherRequest, TeacherResult

__all__ = ["TeacherBackend", "TeacherCapabilities", "TeacherRequest", "TeacherResult"]
