"""`transformers` teacher: a local causal LM sampled in-process (CPU or one GPU), batched and seeded.

Raw-prefix continuation, like an open-weight teacher behind vLLM: the teacher library renders the text
(`teacher_context_block + prompt_text + response_prefix`, or with a `teacher_context` and the original
chat messages, the chat re-rendered with the context as an extra system message through this
plugin's `render_chat`) and micro-batches every request waiting at that moment into one raw call
(up to `options.batch_rows` rows). This plugin's raw call delegates to the project's one sampling
loop (`omniopd_verl.runtime.generation.sample_continuations`, through `LocalSampler.sample`): each request's
prefix is prefilled ONCE and its n samples decode from copies of that KV cache (vLLM's n-sampling);
each request's samples come from a torch.Generator seeded by its seed, so they do not depend on the
rest of the batch, and reruns are bit-identical. A sample ends with "stop" when the model wrote EOS,
else "length". Being white-box, it also gives `token_logprobs` (log pi_T of given tokens, steering
included): the local engine's token-level OPD baseline (local/methods.py) reads its teacher signal there.

Options (besides the library's): device ("cpu"; "cuda" for one GPU), dtype ("float32" | "bfloat16" |
"float16"), model ("reference": share the engine's frozen reference copy instead of loading
`config.model`; the engine passes it as `registry.create_teacher(config, resources={"reference_model":
(model, tokenizer)})`, and `config.model` should still name those weights, since it is part of the
cache key), steer (null; {tokens: arithmetic, bias: 4.0} makes it the demonstration teacher of
`omniopd_verl.teachers.steering`: the logits of that token set raised by `bias` before sampling). Library
defaults for this teacher: max_tokens_factor 1.0, batch_rows 64, cost 0.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from omniopd_verl.config import TeacherConfig
from omniopd_verl.errors import ConfigError
from omniopd_verl.protocols import RawAnswer, RawRequest, RawSample, TeacherCapabilities
from omniopd_verl.runtime.generation import eos_token_ids, pad_token_id
from omniopd_verl.teachers.steering import read_steering

DTYPES = (None, "float32", "bfloat16", "float16")  # options.dtype: None = the checkpoint's own


class LocalSampler:
    """Batched, per-request-seeded sampling of text continuations from a causal LM."""

    def __init__(self, model: Any, tokenizer: Any, device: str = "cpu"):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        # left padding is done by hand below: the tokenizer may be shared with the student, leave it alone
        self.pad_token_id = pad_token_id(tokenizer)
        self.eos_token_ids = eos_token_ids(model, tokenizer)
        self.logit_bias_V = None  # an optional [V] logit bias (a steered demonstration teacher)
        self.share_prefix = None  # False = prefill every sample's row separately (benchmark baseline)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, name_or_path: str, *, device: str = "cpu", dtype: str | None = None) -> LocalSampler:
        import torch

        from omniopd_verl.runtime.models import load_causal_lm

        if dtype not in DTYPES:
            raise ConfigError(f"omniopd.teacher.options.dtype={dtype!r} is invalid: allowed one of {list(DTYPES)}")
        model, tokenizer = load_causal_lm(name_or_path, dtype=getattr(torch, dtype) if dtype else None, device=device)
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

        One prefill per prompt, its n samples decoded from copies of that KV cache
        (`omniopd_verl.runtime.generation.sample_continuations`); each request's samples depend on its seed only.
        With `with_finish`, also each sample's finish reason: "stop" if the model wrote EOS, else "length".
        """
        from omniopd_verl.runtime.generation import sample_continuations

        bos = self.tokenizer.bos_token
        encoded = []
        for prompt in prompts:
            # a chat-templated prompt may already start with BOS text: do not add a second one
            add_special = not (bos and prompt.startswith(bos))
            encoded.append(self.tokenizer(prompt, add_special_tokens=add_special)["input_ids"])
        with self._lock:
            samples = sample_continuations(
                self.model,
                encoded,
                n=n,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seeds=seed,
                pad_token_id=self.pad_token_id,
                eos_token_ids=self.eos_token_ids,
                logit_bias_V=self.logit_bias_V,
                share_prefix=self.share_prefix,
            )
        results = [[self.tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in row] for row in samples]
        finishes = [["stop" if s.finished else "length" for s in row] for row in samples]
        return (results, finishes) if with_finish else results


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
    option_names = ("device", "dtype", "model", "steer")

    @classmethod
    def check_config(cls, config: TeacherConfig, resources: Sequence[str] = ()) -> None:
        """The option values, without loading anything (`train --dry-run`; the constructor runs it first).
        `resources`: the names of what the engine will share (the local engine: 'reference_model')."""
        options = config.options
        source = options.get("model")
        if source not in (None, "reference"):
            raise ConfigError(
                f"omniopd.teacher.options.model={source!r} is invalid for the transformers teacher: allowed null "
                "(load teacher.model) or 'reference' (share the engine's frozen reference copy)"
            )
        if source == "reference" and "reference_model" not in resources:
            raise ConfigError(
                "omniopd.teacher.options.model='reference' needs the engine's reference model, and none was "
                "given: only an engine that holds one (the local engine) can share it, through "
                "registry.create_teacher(config, resources={'reference_model': (model, tokenizer)})"
            )
        if source is None and not config.model:
            raise ConfigError(
                "omniopd.teacher.model=None is invalid for the transformers teacher: allowed a local model "
                "folder or 'smollm2-135m-instruct' (or options.model: reference)"
            )
        if options.get("dtype") not in DTYPES:
            raise ConfigError(
                f"omniopd.teacher.options.dtype={options.get('dtype')!r} is invalid: allowed one of {list(DTYPES)}"
            )

    def __init__(self, config: TeacherConfig, resources: Mapping[str, Any] | None = None):
        options = dict(config.options)
        source = options.get("model")
        self.check_config(config, resources=tuple(resources or ()))
        if source == "reference":
            shared = resources["reference_model"]
            model, tokenizer = shared
            device = str(getattr(model, "device", options.get("device", "cpu")))
            self.sampler = LocalSampler(model, tokenizer, device)
        else:
            self.sampler = LocalSampler.load(
                config.model, device=options.get("device", "cpu"), dtype=options.get("dtype")
            )

        self.steering = read_steering(options, self.sampler.tokenizer, self.sampler.model)
        if self.steering is not None:  # the demonstration teacher: its own sampler view, never a shared one's state
            base = self.sampler
            self.sampler = LocalSampler(base.model, base.tokenizer, base.device)
            self.sampler.logit_bias_V = self.steering.bias_V

    def token_logprobs(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]) -> list:
        """White-box: log pi_T(y_t | prompt, y_<t) of every given response token, steering included, float32
        [T] tensors (the local engine's token-level OPD baseline reads its teacher signal here)."""
        from omniopd_verl.runtime.generation import score_continuations

        scores = score_continuations(
            self.sampler.model,
            prompt_ids,
            [[r] for r in response_ids],
            pad_token_id=self.sampler.pad_token_id,
            logit_bias_V=self.sampler.logit_bias_V,
        )
        return [row[0] for row in scores]

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
