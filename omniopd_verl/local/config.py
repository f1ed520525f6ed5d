"""The local engine's own settings (`local:` in the YAML) and the loader for a whole run file.

A run file has two nodes: `omniopd:` (the algorithm, validated by `OmniOPDConfig.from_dict`, shared
with the verl engine) and `local:` (what only this engine needs: model, data, batch sizes, optimizer,
steps, output and checkpoints). `key=value` overrides use OmegaConf's dot-list syntax, e.g.
`local.steps=3 omniopd.beta=0.2`. Every invalid value raises ConfigError naming the key, the value and
what is allowed, in the same style as OmniOPDConfig.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omniopd_verl.config import OmniOPDConfig, build_dataclass
from omniopd_verl.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16")
# one class each in local/methods.py (OmniOPD; TokenOPD, the white-box baseline; SeqKD, SFT on the teacher's answers)
METHODS = ("omniopd", "token_opd", "seqkd")
CONTROLS = ("none", "shuffle_pi_hat")  # local/control.py: the control arm


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"local.{key}={value!r} is invalid: allowed {allowed}")


def _int_at_least(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(key, value, f"an integer >= {low}")


def _positive(key: str, value: Any, *, allow_zero: bool = False, high: float = math.inf) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0) and value <= high
    if not ok:
        hi = "" if high == math.inf else f" and <= {high}"
        raise _fail(key, value, f"a finite number {'>= 0' if allow_zero else '> 0'}{hi}")


def _nonempty_str(key: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or not value:
        raise _fail(key, value, "null or a non-empty string" if optional else "a non-empty string")


@dataclass
class DataConfig:
    """Where prompts come from (`local.data.*`): a JSONL file with one problem per line."""

    path: str = "pkg://omniopd_verl.data/gsm8k_subset/train.jsonl"
    """JSONL file of training prompts: `pkg://package/path` for a file shipped in a package (the default: the
    GSM8K subset in omniopd_verl/data/gsm8k_subset), else a path from the current folder or the repo root."""
    prompt_key: str = "question"
    """Field holding the user prompt (sent through the student's chat template)."""
    reference_key: str | None = "answer"
    """Field holding privileged text shown to the teacher only (StudentResponse.teacher_context); null = none."""
    heldout_path: str | None = None
    """JSONL file of held-out prompts for the before/after teacher-agreement evaluation; null = the tail of `path`."""
    heldout_prompts: int = 0
    """How many held-out prompts to evaluate before and after training (0 = no evaluation)."""
    system_prompt: str | None = None
    """Optional system message prepended to every prompt."""
    max_prompts: int | None = None
    """Use only the first this-many training prompts (null = all)."""

    def __post_init__(self) -> None:
        _nonempty_str("data.path", self.path)
        _nonempty_str("data.prompt_key", self.prompt_key)
        _nonempty_str("data.reference_key", self.reference_key, optional=True)
        _nonempty_str("data.heldout_path", self.heldout_path, optional=True)
        _int_at_least("data.heldout_prompts", self.heldout_prompts, 0)
        _nonempty_str("data.system_prompt", self.system_prompt, optional=True)
        if self.max_prompts is not None:
            _int_at_least("data.max_prompts", self.max_prompts, 1)


@dataclass
class LocalEngineConfig:
    """Everything the local engine needs beyond the algorithm (`local:` in the run file)."""

    model: str = "smollm2-135m-instruct"
    """Student: a built-in model name or a local transformers folder. pi_ref is a frozen copy of it."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """Prompt source and held-out evaluation."""
    steps: int = 10
    """Optimizer steps (one rollout batch, one audit and one update each)."""
    prompts_per_step: int = 4
    """Prompts drawn per step (in a seeded order, without replacement within an epoch)."""
    responses_per_prompt: int = 2
    """Student samples per prompt."""
    micro_batch_size: int = 4
    """Sequences per forward/backward in the update (gradients are accumulated over the batch)."""
    max_new_tokens: int = 128
    """Longest student response, in tokens."""
    max_prompt_tokens: int = 512
    """Prompts longer than this (after the chat template) are left-truncated."""
    temperature: float = 1.0
    """Student sampling temperature. On-policy distillation samples from pi_theta itself: keep 1.0."""
    top_p: float = 1.0
    """Student nucleus sampling (1.0 = the full distribution, as the spec's pi_theta)."""
    lr: float = 1e-5
    """AdamW learning rate (constant after the warmup)."""
    lr_warmup_steps: int = 0
    """Linear warmup: step k (1-based) trains at lr x min(1, k / lr_warmup_steps); 0 = lr from the first step.
    Why it exists: AdamW's first updates move every weight by about lr whatever its gradient's noise (the
    second-moment estimate has seen one or two gradients), so on a handful of samples they are mostly drift."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 = no clipping)."""
    policy_loss: str = "vanilla"
    """verl policy-loss function (core_algos.get_policy_loss_fn); 'vanilla' is PPO's clipped objective."""
    clip_ratio: float = 0.2
    """PPO clip range handed to verl's policy loss (inactive here: one update per rollout, ratio = 1)."""
    seed: int = 0
    """Seed of data order, student sampling and initialisation of everything random in the engine."""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda'."""
    dtype: str = "float32"
    """Parameter dtype of student and reference: 'float32' (CPU default) or 'bfloat16'."""
    output_dir: str = "runs/local"
    """Where metrics.jsonl, tensorboard/, checkpoints/ and the audit report go."""
    save_every: int = 0
    """Save a checkpoint every this many steps (0 = only at the end)."""
    save_final: bool = True
    """Save a checkpoint when training ends (student + AdamW state: ~1.6 GB for SmolLM2-135M in fp32). The demo's
    arms turn it off: they are measured in the process that trained them and never resumed."""
    resume: bool = True
    """Continue from the newest checkpoint in output_dir/checkpoints when there is one."""
    progress: bool = True
    """Show a progress bar on stderr."""
    tensorboard: bool = True
    """Also write metrics as TensorBoard events (output_dir/tensorboard)."""
    method: str = "omniopd"
    """'omniopd'; 'token_opd': the white-box token-level OPD baseline (local/token_opd.py; needs a local teacher);
    'seqkd': SFT on the teacher's complete answers to the step's prompts (local/seqkd.py; any teacher)."""
    control: str = "none"
    """'none', or 'shuffle_pi_hat': the control arm, pi_hat permuted across the batch's chunks (local/control.py)."""

    def __post_init__(self) -> None:
        if isinstance(self.data, Mapping):
            self.data = _build(DataConfig, self.data, "data.")
        if not isinstance(self.data, DataConfig):
            raise _fail("data", self.data, "a mapping of data settings")
        _nonempty_str("model", self.model)
        for key in (
            "steps",
            "prompts_per_step",
            "responses_per_prompt",
            "micro_batch_size",
            "max_new_tokens",
            "max_prompt_tokens",
        ):
            _int_at_least(key, getattr(self, key), 1)
        _positive("temperature", self.temperature)
        _positive("top_p", self.top_p, high=1.0)
        _positive("lr", self.lr)
        _int_at_least("lr_warmup_steps", self.lr_warmup_steps, 0)
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        betas = self.adam_betas
        if (
            not isinstance(betas, Sequence)
            or isinstance(betas, str)
            or len(betas) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)
        ):
            raise _fail("adam_betas", betas, "two numbers in [0, 1)")
        self.adam_betas = (float(betas[0]), float(betas[1]))
        _positive("grad_clip", self.grad_clip, allow_zero=True)
        _nonempty_str("policy_loss", self.policy_loss)
        _positive("clip_ratio", self.clip_ratio)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise _fail("seed", self.seed, "an integer")
        if self.device not in DEVICES:
            raise _fail("device", self.device, f"one of {list(DEVICES)}")
        if self.dtype not in DTYPES:
            raise _fail("dtype", self.dtype, f"one of {list(DTYPES)}")
        if self.method not in METHODS:
            raise _fail("method", self.method, f"one of {list(METHODS)}")
        if self.control not in CONTROLS:
            raise _fail("control", self.control, f"one of {list(CONTROLS)}")
        _nonempty_str("output_dir", self.output_dir)
        _int_at_least("save_every", self.save_every, 0)
        for key in ("save_final", "resume", "progress", "tensorboard"):
            if not isinstance(getattr(self, key), bool):
                raise _fail(key, getattr(self, key), "true or false")

    @property
    def batch_size(self) -> int:
        """Responses per step."""
        return self.prompts_per_step * self.responses_per_prompt

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, data: Any, prefix: str) -> Any:
    return build_dataclass(cls, data, prefix, node="local")


@dataclass
class RunConfig:
    """A whole local run: the algorithm and the engine."""

    omniopd: OmniOPDConfig
    local: LocalEngineConfig

    def to_dict(self) -> dict[str, Any]:
        return {"omniopd": self.omniopd.to_dict(), "local": self.local.to_dict()}


def load_run_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a run file (YAML with `omniopd:` and `local:`) and apply `key=value` overrides, with the grammar
    every command shares (`omniopd_verl.config.overrides`: `+key=value` adds a plugin option, as on verl)."""
    from omniopd_verl.config.overrides import load_config

    if path is not None:
        from omniopd_verl.package_files import resolve

        if not os.path.isfile(resolve(path)):
            raise ConfigError(f"config file {str(resolve(path))!r} does not exist")
    data = load_config(path, overrides, {"omniopd": OmniOPDConfig, "local": LocalEngineConfig})
    omniopd = OmniOPDConfig.from_dict(data["omniopd"])
    # one table of what each engine supports (omniopd_verl.engines): refusing beats silently ignoring
    from omniopd_verl.engines import check_engine_support

    check_engine_support(omniopd, "local")
    return RunConfig(omniopd=omniopd, local=_build(LocalEngineConfig, data["local"], ""))
