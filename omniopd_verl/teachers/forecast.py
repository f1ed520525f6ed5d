"""A cost forecast before a run pays: teacher requests, tokens, $ per step and per run, and the rate a step needs.

From the config alone (no plugin is built, no call is made):
- trajectories per step = batch prompts x rollout n; anchors per trajectory = min(M, response tokens // C)
  (the scheduler places at most M non-overlapping chunks of C tokens);
- raw calls per anchor = 1 for a teacher that takes `n` (openai_completions, litellm with supports_n),
  else N single-sample calls;
- input tokens per call = prompt tokens + the response prefix before the anchor (a chunk starts anywhere
  in [0, T - C]: on average (T - C) / 2 tokens) + the chat template's overhead for chat teachers (a raw
  completion teacher is sent the prompt text as is); output tokens per call = samples x ceil(C x
  max_tokens_factor), the most a call may be billed (a teacher that stops early costs less);
- prompt tokens (verl): the mean length of data.train_files' prompts with the model's chat template (the
  first 1,000 rows, at most data.max_prompt_length), as verl's dataset tokenizes them; when the data or
  the tokenizer cannot be read here, data.max_prompt_length (an upper estimate, said in the output);
- $ at the price table the library would use: options.input/output_cost_per_token, else litellm's table
  for options.price_model (or the model name for litellm teachers); unknown -> no $ figures.
The rate: the requests (tokens) of one step divided by the minutes the audit may take; given for 1 and
5 minutes, since how long a rollout lasts depends on the hardware.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omniopd_verl.teachers.accounting import CHAT_OVERHEAD_TOKENS


@dataclass
class Forecast:
    trajectories_per_step: int
    anchors_per_trajectory: int
    requests_per_step: int
    input_tokens_per_step: int
    output_tokens_per_step: int
    usd_per_step: float | None
    steps: int | None
    usd_per_run: float | None
    max_cost_usd: float | None
    prompt_source: str | None = None  # where the prompt length came from (verl_forecast), for the output

    def lines(self) -> list[str]:
        rpm1, rpm5 = self.requests_per_step, math.ceil(self.requests_per_step / 5)
        tokens = self.input_tokens_per_step + self.output_tokens_per_step
        out = [
            f"teacher forecast: {self.requests_per_step} requests per step ({self.trajectories_per_step} trajectories "
            f"x {self.anchors_per_trajectory} anchors), {self.input_tokens_per_step} input + "
            f"{self.output_tokens_per_step} output tokens per step",
            f"teacher forecast: to audit a step within 1 min it needs requests_per_minute >= {rpm1} and "
            f"tokens_per_minute >= {tokens}; within 5 min >= {rpm5} and >= {math.ceil(tokens / 5)}",
        ]
        if self.prompt_source:
            out.append(f"teacher forecast: prompt length from {self.prompt_source}")
        if self.usd_per_step is None:
            out.append(
                "teacher forecast: $ unknown (no price: set omniopd.teacher.options.input_cost_per_token/"
                "output_cost_per_token or options.price_model)"
            )
        else:
            run = "" if self.usd_per_run is None else f", ${self.usd_per_run:.4f} for {self.steps} steps"
            out.append(
                f"teacher forecast: ${self.usd_per_step:.4f} per step{run} (an upper estimate: full-length answers)"
            )
        warning = self.warning()
        if warning:
            out.append(warning)
        return out

    def warning(self) -> str | None:
        if self.max_cost_usd is None or self.usd_per_run is None or self.usd_per_run <= self.max_cost_usd:
            return None
        covered = int(self.max_cost_usd // self.usd_per_step) if self.usd_per_step else 0
        return (
            f"WARNING: omniopd.teacher.max_cost_usd=${self.max_cost_usd:g} cannot cover "
            f"trainer.total_training_steps={self.steps} (forecast ${self.usd_per_run:.4f}); it covers about "
            f"{covered} steps: the run will stop there"
        )


def teacher_price(config: Any) -> tuple[float, float] | None:
    """($ per input token, $ per output token) the library would charge, or None when unknown."""
    options = dict(config.options or {})
    if "input_cost_per_token" in options or "output_cost_per_token" in options:
        return float(options.get("input_cost_per_token") or 0.0), float(options.get("output_cost_per_token") or 0.0)
    model = options.get("price_model") or (config.model if config.name == "litellm" else None)
    if model is None:
        return (0.0, 0.0) if config.name in ("transformers", "vllm") else None
    from omniopd_verl.teachers.reliability import import_litellm

    try:
        p_in, p_out = import_litellm().cost_per_token(model=model, prompt_tokens=1, completion_tokens=0)[0], None
        p_out = import_litellm().cost_per_token(model=model, prompt_tokens=0, completion_tokens=1)[1]
    except Exception:  # not in litellm's table
        return None
    return float(p_in), float(p_out)


def forecast(
    omniopd: Any,
    *,
    prompts_per_step: int,
    rollout_n: int,
    prompt_tokens: int,
    response_tokens: int,
    steps: int | None,
    supports_n: bool = True,
    max_tokens_factor: float = 1.25,
    raw_completion: bool = False,
    prompt_source: str | None = None,
) -> Forecast:
    """The forecast for one OmniOPDConfig and the run's shape (see the module docstring)."""
    teacher = omniopd.teacher
    M, N, C = omniopd.chunks, omniopd.samples, omniopd.chunk_len
    factor = float((teacher.options or {}).get("max_tokens_factor", max_tokens_factor))
    trajectories = prompts_per_step * rollout_n
    anchors = min(M, response_tokens // C)
    calls_per_anchor = 1 if supports_n else N
    samples_per_call = N if supports_n else 1
    requests = trajectories * anchors * calls_per_anchor
    prefix = max(0, response_tokens - C) // 2  # the mean start of a chunk placed in [0, T - C]
    input_per_call = prompt_tokens + prefix + (0 if raw_completion else CHAT_OVERHEAD_TOKENS)
    output_per_call = samples_per_call * max(1, math.ceil(C * factor))
    price = teacher_price(teacher)
    usd = None if price is None else requests * (input_per_call * price[0] + output_per_call * price[1])
    return Forecast(
        trajectories_per_step=trajectories,
        anchors_per_trajectory=anchors,
        requests_per_step=requests,
        input_tokens_per_step=requests * input_per_call,
        output_tokens_per_step=requests * output_per_call,
        usd_per_step=usd,
        steps=steps,
        usd_per_run=None if usd is None or steps is None else usd * steps,
        max_cost_usd=teacher.max_cost_usd,
        prompt_source=prompt_source,
    )


def data_prompt_tokens(cfg: Any, rows: int = 1000) -> tuple[int, str] | None:
    """(mean prompt tokens, where from) of data.train_files as verl's dataset tokenizes them: the prompt
    messages with the model's chat template and the generation prompt, at most data.max_prompt_length.
    None when the data or the tokenizer cannot be read here (a dry run on a laptop for a cluster's paths)."""
    from omegaconf import OmegaConf

    def get(key: str, default: Any = None) -> Any:
        return OmegaConf.select(cfg, key, default=default)

    files = get("data.train_files")
    files = [files] if isinstance(files, str) else list(files or [])
    model = get("actor_rollout_ref.model.tokenizer_path") or get("actor_rollout_ref.model.path")
    if not files or not model:
        return None
    try:
        import pyarrow.parquet as pq
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model))
        key = get("data.prompt_key", "prompt")
        prompts = pq.read_table(str(files[0]), columns=[key]).slice(0, rows).column(key).to_pylist()
        texts = [tokenizer.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False) for p in prompts]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    except Exception:  # noqa: BLE001 - unreadable here: the caller falls back to data.max_prompt_length
        return None
    if not lengths:
        return None
    cap = int(get("data.max_prompt_length", 512))
    mean = round(sum(min(n, cap) for n in lengths) / len(lengths))
    return mean, f"{files[0]} (mean of {len(lengths)} prompts with the chat template: {mean} tokens)"


def verl_forecast(cfg: Any, omniopd: Any) -> Forecast:
    """The forecast of a composed verl config (train --dry-run)."""
    from omegaconf import OmegaConf

    from omniopd_verl import registry

    def get(key: str, default: Any = None) -> Any:
        return OmegaConf.select(cfg, key, default=default)

    caps = getattr(registry.load("teachers", omniopd.teacher.name), "capabilities", None)
    supports_n = getattr(caps, "supports_n", True) if caps is not None else True
    factor = getattr(caps, "max_tokens_factor", 1.25) if caps is not None else 1.25
    steps = get("trainer.total_training_steps")
    measured = data_prompt_tokens(cfg)
    if measured is None:
        prompt_tokens = int(get("data.max_prompt_length", 512))
        source = (
            f"data.max_prompt_length={prompt_tokens} (the data or tokenizer is not readable here: an upper estimate)"
        )
    else:
        prompt_tokens, source = measured
    raw = getattr(caps, "raw_completion", False) if caps is not None else False
    return forecast(
        omniopd,
        prompts_per_step=int(get("data.train_batch_size", 1)),
        rollout_n=int(get("actor_rollout_ref.rollout.n", 1)),
        prompt_tokens=prompt_tokens,
        response_tokens=int(get("data.max_response_length", 512)),
        steps=int(steps) if isinstance(steps, int) else None,
        supports_n=supports_n if isinstance(supports_n, bool) else True,
        max_tokens_factor=float(factor),
        raw_completion=raw if isinstance(raw, bool) else False,
        prompt_source=source,
    )
