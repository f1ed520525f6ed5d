"""`vllm` teacher: an in-process vLLM engine (GPU), raw-prefix continuation like `openai_completions`.

vLLM is an optional extra (`pip install omniopd-verl[vllm]`, GPU only); it is imported when the teacher
is built, and its absence is a clear error. The teacher library renders the prefix (exactly
`context_prefix(teacher_context) + prompt_text + response_prefix`, as for the other raw-completion
teachers) and micro-batches every waiting request into one raw call: one `LLM.generate` with one
`SamplingParams` per request (n, max_tokens, temperature, top_p, seed) — vLLM batches them and reuses
nested prefixes with prefix caching. Cache, accounting and validation are the library's.

Options: passed to `vllm.LLM(model=config.model, **options)` (e.g. gpu_memory_utilization,
tensor_parallel_size, dtype, enable_prefix_caching), except the library's (max_tokens_factor 1.0,
batch_rows). Resources: `{"vllm_module": module}` replaces `import vllm` (tests mimic its offline API).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omniopd_verl.config import TeacherConfig
from omniopd_verl.errors import ConfigError, PluginError
from omniopd_verl.protocols import RawAnswer, RawRequest, RawSample, TeacherCapabilities


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise PluginError(
            "the vllm teacher needs vLLM, which is not installed (it is a GPU-only optional extra): "
            "pip install 'omniopd-verl[vllm]' on a CUDA machine, or use the openai_completions teacher against "
            f"a `vllm serve` endpoint, or the transformers teacher on CPU ({exc})"
        ) from None
    return vllm


class VLLMTeacher:
    capabilities = TeacherCapabilities(
        supports_n=True,
        supports_prefill=True,
        supports_seed=True,
        raw_completion=True,
        batched=True,
        priced=False,
        max_tokens_factor=1.0,
    )

    @classmethod
    def check_config(cls, config: TeacherConfig, resources: Sequence[str] = ()) -> None:
        """What `train --dry-run` can check without vLLM: a model is named (the options are vLLM's engine
        arguments, checked by vLLM when the engine starts)."""
        if not config.model:
            raise ConfigError(
                "omniopd.teacher.model=None is invalid for the vllm teacher: allowed a model path or name"
            )

    def __init__(self, config: TeacherConfig, resources: Mapping[str, Any] | None = None):
        self.check_config(config)
        self.vllm = (resources or {}).get("vllm_module") or _import_vllm()
        self.llm = self.vllm.LLM(model=config.model, **dict(config.options))

    def sample_raw(self, requests: Sequence[RawRequest]) -> list[RawAnswer]:
        params = [
            self.vllm.SamplingParams(
                n=r.n, max_tokens=r.teacher_max_tokens, temperature=r.temperature, top_p=r.top_p, seed=r.seed
            )
            for r in requests
        ]
        outputs = self.llm.generate([r.prompt for r in requests], params, use_tqdm=False)
        return [
            RawAnswer(
                samples=[RawSample(c.text, getattr(c, "finish_reason", None)) for c in output.outputs],
                prompt_tokens=len(output.prompt_token_ids or []),
                completion_tokens=sum(len(c.token_ids) for c in output.outputs),
                cost_usd=0.0,
            )
            for output in outputs
        ]
