"""Sample answers from a model for chat prompts: transformers (CPU or one GPU, batched) or vLLM.

Both back-ends take chat messages, apply the model's chat template, and return n completions per
prompt as text. temperature 0 means greedy (then n must be 1). vLLM is imported only when chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

from omniopd_verl.errors import ConfigError


@dataclass(frozen=True)
class SamplingSpec:
    n: int = 1
    max_new_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.n < 1:
            raise ConfigError(f"--n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0, got {self.temperature}")
        if self.temperature == 0 and self.n > 1:
            raise ConfigError(
                f"--n {self.n} with --temperature 0 would repeat one greedy answer; set --temperature > 0"
            )
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")


class TransformersGenerator:
    """Batched sampling through `omniopd_verl.runtime.generation` (one prefill per prompt for its n answers);
    prompts are sorted by length to waste less padding."""

    name = "transformers"

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        batch_size: int = 8,
        dtype: str = "auto",
        cpu_threads: int | None = None,
    ):
        import torch

        from omniopd_verl.runtime.models import load_causal_lm

        if cpu_threads is not None:
            # on a busy machine torch's OpenMP threads spin-wait on each other: one thread decoded a
            # 135M model 7x faster than two on a shared 2-core box (0.32 s vs 2.3 s per step)
            if cpu_threads < 1:
                raise ConfigError(f"--cpu-threads must be >= 1, got {cpu_threads}")
            torch.set_num_threads(cpu_threads)

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = {
            "auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
            "float32": torch.float32,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }
        if dtype not in torch_dtype:
            raise ConfigError(f"--dtype {dtype!r} is not one of {sorted(torch_dtype)}")
        self.model, self.tokenizer = load_causal_lm(model, dtype=torch_dtype[dtype], device=device)
        self.tokenizer.padding_side = "left"
        self.device, self.batch_size = device, batch_size

    def generate(self, prompts: list[list[dict]], spec: SamplingSpec, progress=None) -> list[list[str]]:
        """n answers per chat prompt (prompt i seeded by derive_seed(spec.seed, i), prefilled once for its n);
        `progress(done, total)` is called after every batch when given."""
        from omniopd_verl.core.seeds import derive_seed
        from omniopd_verl.runtime.generation import eos_token_ids, pad_token_id, sample_continuations

        texts = [self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        outputs: list[list[str]] = [[] for _ in texts]
        eos = eos_token_ids(self.model, self.tokenizer)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            samples = sample_continuations(
                self.model,
                [ids[i] for i in idx],
                n=spec.n,
                max_new_tokens=spec.max_new_tokens,
                temperature=spec.temperature,
                top_p=spec.top_p,
                seeds=[derive_seed(spec.seed, i) for i in idx],
                pad_token_id=pad_token_id(self.tokenizer),
                eos_token_ids=eos,
            )
            for i, row in zip(idx, samples, strict=True):
                outputs[i] = [self.tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in row]
            if progress is not None:
                progress(min(start + self.batch_size, len(order)), len(order))
        return outputs


class VLLMGenerator:
    """vLLM offline inference (`LLM.chat`), for GPU runs; tensor parallel over the visible GPUs."""

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.85,
    ):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ConfigError(
                "--backend vllm needs vLLM, which is not installed here: pip install 'omniopd-verl[vllm]' on a "
                "CUDA machine, or use --backend transformers"
            ) from exc
        import os

        from omniopd_verl.runtime.models import BUILTIN_MODELS, resolve_model_path

        # built-in names resolve to their converted folder; anything else (a folder or a hub id) goes to vLLM
        path = resolve_model_path(model) if model in BUILTIN_MODELS or os.path.isdir(model) else model
        self.llm = LLM(
            model=path,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
        )

    def generate(self, prompts: list[list[dict]], spec: SamplingSpec) -> list[list[str]]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=spec.n, temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_new_tokens, seed=spec.seed
        )
        results = self.llm.chat(prompts, params, use_tqdm=False)
        return [[o.text for o in r.outputs] for r in results]


BACKENDS = {"transformers": TransformersGenerator, "vllm": VLLMGenerator}


def make_generator(backend: str, model: str, **options):
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r} is not one of {sorted(BACKENDS)}")
    return BACKENDS[backend](model, **options)
