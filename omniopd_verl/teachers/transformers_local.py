"""`transformers` teacher: a local causal LM sampled in-process (CPU or one GPU), batched and seeded.

Raw-prefix continuation, like an open-weight teacher behind vLLM: the teacher library renders the text
(`teacher_context_block + prompt_text + response_prefix`, or with a `teacher_context` and the original
chat messages, the chat re-rendered with the context as an extra system message through this
plugin's `render_chat`) and micro-batches every request waiting at that moment into one raw call
(up to `options.batch_rows` rows). This plugin's raw call delegates to one generation function,
`LocalSampler.sample`: left-padded, the KV cache, no grad, and a logits processor that draws each
row's token from a torch.Generator seeded by its request's seed (temperature and top-p applied
first), then forces greedy decoding onto that draw. Reruns of the same batch are bit-identical; the
cache keeps reruns identical in any case. A sample ends with "stop" when the model wrote EOS, else "length".

Options (besides the library's): device ("cpu"; "cuda" for one GPU), dtype ("float32" | "bfloat16" |
"float16"), model ("reference": share the engine's frozen reference copy instead of loading
`config.model`; the engine passes it as `registry.create_teacher(config, resources={"reference_model":
(model, tokenizer)})`, and `config.model` should still name those weights, since it is part of the
cache key). Library defaults for this teacher: max_tokens_factor 1.0, batch_rows 64, cost 0.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from omniopd_verl.config import TeacherConfig
from omniopd_verl.errors import ConfigError
from omniopd_verl.protocols import RawAnswer, RawRequest, RawSample, TeacherCapabilities


class LocalSampler:
    """Batched, per-request-seeded sampling of text continuations from a causal LM."""

    def __init__(self, model: Any, tokenizer: Any, device: str = "cpu"):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        # left padding is done by hand below: the tokenizer may be shared with the student, leave it alone
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = pad
        self._lock = threading.Lock()

    @classmethod
    def load(cls, name_or_path: str, *, device: str = "cpu", dtype: str | None = None) -> LocalSampler:
        import torch

        from omniopd_verl.models import load_causal_lm

        dtypes = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in dtypes:
            raise ConfigError(f"omniopd.teacher.options.dtype={dtype!r} is invalid: allowed one of {list(dtypes)}")
        model, tokenizer = load_causal_lm(name_or_path, dtype=dtypes[dtype], device=device)
        return cls(model, tokenizer, device)

    def render_chat(self, messages: Sequence[dict[str, Any]]) -> str:
        """Chat messages as prompt text; a trailing assistant message is continued, not closed."""
        messages = list(messages)
        if messages and messages[-1]["role"] == "assistant":
            return self.tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def sample(
        self,
        prompts: Sequence[str],
        *,
        n: int | Sequence[int],
        max_new_tokens: int | Sequence[int],
        temperature: float,
        top_p: float,
        seed: int | Sequence[int],
        with_finish: bool = False,
    ) -> list[list[str]] | tuple[list[list[str]], list[list[str]]]:
        """For each prompt, `n` continuations (text of the new tokens only, special tokens removed).

        With `with_finish`, also each sample's finish reason: "stop" if the model wrote EOS, else "length".
        """
        import torch

        count = len(prompts)
        ns = [n] * count if isinstance(n, int) else list(n)
        seeds = [seed] * count if isinstance(seed, int) else list(seed)
        limits = [max_new_tokens] * count if isinstance(max_new_tokens, int) else list(max_new_tokens)
        rows = [i for i, k in enumerate(ns) for _ in range(k)]
        if not rows:
            return ([[] for _ in prompts], [[] for _ in prompts]) if with_finish else [[] for _ in prompts]
        bos = self.tokenizer.bos_token
        encoded = []
        for i in rows:
            # a chat-templated prompt may already start with BOS text: do not add a second one
            add_special = not (bos and prompts[i].startswith(bos))
            encoded.append(self.tokenizer(prompts[i], add_special_tokens=add_special)["input_ids"])
        width = max(len(ids) for ids in encoded)
        pad = self.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=self.device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=self.device)
        generators = []
        for s in seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(int(s) % (2**63))
            generators.append(g)
        processor = _SeededSampling(rows, generators, temperature, top_p)
        row_limits = [limits[i] for i in rows]
        with self._lock, torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max(row_limits),
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=[processor],
                pad_token_id=pad,
                use_cache=True,
            )
        new_tokens = out[:, width:].tolist()
        results: list[list[str]] = [[] for _ in prompts]
        finishes: list[list[str]] = [[] for _ in prompts]
        eos = self._eos_ids()
        for row, i in enumerate(rows):
            ids = new_tokens[row][: row_limits[row]]
            results[i].append(self.tokenizer.decode(ids, skip_special_tokens=True))
            finishes[i].append("stop" if any(t in eos for t in ids) else "length")
        return (results, finishes) if with_finish else results

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        generation = getattr(self.model, "generation_config", None)
        extra = getattr(generation, "eos_token_id", None)
        ids |= set(extra) if isinstance(extra, (list, tuple)) else {extra}
        return {i for i in ids if i is not None}


class _SeededSampling:
    """A logits processor that samples each row from its request's generator, then forces that token.

    Hugging Face's greedy loop then picks the forced token; it keeps the KV cache, the padding and the
    per-row EOS handling. Rows of one request share its generator, drawn in row order, so the result
    depends only on the request's seed and the logits (which may differ in the last bits with batching).
    """

    def __init__(self, rows: list[int], generators: list[Any], temperature: float, top_p: float):
        self.rows = rows
        self.generators = generators
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        logits = scores.float()
        if self.temperature == 0:
            chosen = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(logits / self.temperature, dim=-1)
            if self.top_p < 1.0:
                sorted_p, order = probs.sort(dim=-1, descending=True)
                before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly before each token
                sorted_p = sorted_p.masked_fill(before >= self.top_p, 0.0)
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
            cdf = probs.cumsum(dim=-1)
            uniforms = torch.empty(len(self.rows), dtype=torch.float32)
            for row, req in enumerate(self.rows):
                uniforms[row] = torch.rand((), generator=self.generators[req])
            target = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
            chosen = torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=logits.shape[-1] - 1)
        forced = torch.full_like(scores, -math.inf)
        forced.scatter_(-1, chosen.unsqueeze(-1), 0.0)
        return forced


class TransformersTeacher:
    """The `transformers` teacher plugin (raw call only); config.model = path or built-in name."""

    capabilities = TeacherCapabilities(
        supports_n=True,
        supports_prefill=True,
        supports_seed=True,
        raw_completion=True,
        batched=True,
        priced=False,
        max_tokens_factor=1.0,
    )
    option_names = ("device", "dtype", "model")

    def __init__(self, config: TeacherConfig, resources: Mapping[str, Any] | None = None):
        options = dict(config.options)
        source = options.get("model")
        if source not in (None, "reference"):
            raise ConfigError(
                f"omniopd.teacher.options.model={source!r} is invalid for the transformers teacher: allowed null "
                "(load teacher.model) or 'reference' (share the engine's frozen reference copy)"
            )
        if source == "reference":
            shared = (resources or {}).get("reference_model")
            if shared is None:
                raise ConfigError(
                    "omniopd.teacher.options.model='reference' needs the engine's reference model, and none was "
                    "given: only an engine that holds one (the local engine) can share it, through "
                    "registry.create_teacher(config, resources={'reference_model': (model, tokenizer)})"
                )
            model, tokenizer = shared
            device = str(getattr(model, "device", options.get("device", "cpu")))
            self.sampler = LocalSampler(model, tokenizer, device)
        elif isinstance((resources or {}).get("sampler"), LocalSampler):  # tests and benchmarks: a prepared sampler
            self.sampler = resources["sampler"]
        else:
            if not config.model:
                raise ConfigError(
                    "omniopd.teacher.model=None is invalid for the transformers teacher: allowed a local model "
                    "folder or 'smollm2-135m-instruct' (or options.model: reference)"
                )
            self.sampler = LocalSampler.load(
                config.model, device=options.get("device", "cpu"), dtype=options.get("dtype")
            )

    def render_chat(self, messages: Sequence[dict[str, Any]]) -> str:
        return self.sampler.render_chat(messages)

    def sample_raw(self, requests: Sequence[RawRequest]) -> list[RawAnswer]:
        """One generate call for every request of the batch (the library micro-batches them)."""
        texts, finishes = self.sampler.sample(
            [r.prompt for r in requests],
            n=[r.n for r in requests],
            max_new_tokens=[r.teacher_max_tokens for r in requests],
            temperature=requests[0].temperature,
            top_p=requests[0].top_p,
            seed=[r.seed for r in requests],
            with_finish=True,
        )
        tok = self.sampler.tokenizer
        answers = []
        for request, samples, reasons in zip(requests, texts, finishes, strict=True):
            answers.append(
                RawAnswer(
                    samples=[RawSample(t, f) for t, f in zip(samples, reasons, strict=True)],
                    prompt_tokens=len(tok(request.prompt, add_special_tokens=False)["input_ids"]),
                    completion_tokens=sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in samples),
                    cost_usd=0.0,
                )
            )
        return answers
