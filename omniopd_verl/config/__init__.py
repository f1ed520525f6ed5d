"""OmniOPDConfig: every knob of the algorithm, validated once, shared by both engines.

The verl YAML node `omniopd:` and the local engine's YAML map onto this dataclass one to one
(`OmniOPDConfig.from_dict`), and so do the `omniopd-verl audit` flags. Defaults are ALGORITHM.md's.
Every invalid value raises ConfigError naming the key, the value and what is allowed.

Plain data: this module imports nothing of the project but errors. Plugin names are checked where
plugins are built (`registry.check_plugin_names(config)`, called by both engines' config builders and
the audit CLI before any model is loaded), not here.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omniopd_verl.errors import ConfigError

ENTROPY_SOURCES = ("exact", "rollout_topk")
# the advantage modes (ALGORITHM.md step 6), named once: every module compares against these
POSTERIOR, CENTERED_PRIOR, CENTERED_BATCH = "posterior", "centered_prior", "centered_batch"
ADVANTAGE_MODES = (POSTERIOR, CENTERED_PRIOR, CENTERED_BATCH)
ON_FAILURE = ("error", "drop")
# verl's KL anchor on unaudited tokens: k3 on the sampled token (cheap) or the top-k reference KL (extra pool)
KL_ANCHORS = ("low_var_kl", "topk_ref")
# verl 0.9.1 core_algos.agg_loss modes; OmniOPD specifies seq-mean-token-sum.
LOSS_AGG_MODES = ("seq-mean-token-sum", "token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"omniopd.{key}={value!r} is invalid: allowed {allowed}")


def _int_at_least(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(key, value, f"an integer >= {low}")


def _number(
    key: str, value: Any, *, low: float, low_open: bool = False, high: float = math.inf, high_open: bool = False
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo = f"{'>' if low_open else '>='} {low}"
        hi = "" if high == math.inf else f" and {'<' if high_open else '<='} {high}"
        raise _fail(key, value, f"a finite number {lo}{hi}")


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise _fail(key, value, f"one of {list(allowed)}")


def _plugin(kind: str, key: str, value: Any) -> None:
    # the name's existence is checked where plugins are built (registry.check_plugin_names)
    if not isinstance(value, str) or not value:
        raise _fail(key, value, f"the name of an installed {kind} plugin (`omniopd-verl plugins` lists them)")


def _mapping(key: str, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise _fail(key, value, "a mapping of plugin options")


_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")


def check_env_name(env: str) -> None:
    """Refuse an api_key_env that is not a variable NAME, without echoing it: it may be the key itself."""
    if not _ENV_NAME.fullmatch(env):
        raise ConfigError(
            "omniopd.teacher.api_key_env is not the name of an environment variable (value not shown: it may be "
            "a key itself): allowed an upper-case variable name such as OPENAI_API_KEY, whose value is the key"
        )


@dataclass
class TeacherConfig:
    """Which teacher to sample from, and how to keep that dependable and cheap (`omniopd.teacher.*`)."""

    name: str = "openai_completions"
    """Teacher plugin (entry point in `omniopd_verl.teachers`), e.g. litellm, openai_completions, transformers, vllm."""
    model: str | None = None
    """Model name as the backend knows it (litellm model string, served model name, or local path)."""
    api_base: str | None = None
    """Base URL of an HTTP teacher (e.g. http://127.0.0.1:8000/v1); None = the provider default."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key. Keys never live in config, cache or logs."""
    temperature: float = 1.0
    """Teacher sampling temperature (ALGORITHM.md: 1.0)."""
    top_p: float = 1.0
    """Teacher nucleus sampling (ALGORITHM.md: 1.0)."""
    max_concurrency: int = 16
    """Raw calls in flight at once, for the whole run (every worker together)."""
    requests_per_minute: float | None = None
    """Request rate limit for the whole run: at most this many calls in any 60 s; None = unlimited."""
    tokens_per_minute: float | None = None
    """Token rate limit for the whole run (prompt + completion, in any 60 s); None = unlimited."""
    max_retries: int = 5
    """Retries per request on 429, 5xx, timeouts, connection errors and short/malformed answers."""
    timeout_s: float = 120.0
    """Per-request timeout in seconds."""
    on_failure: str = "error"
    """After the last retry: 'error' stops the run; 'drop' drops the anchor and counts it in metrics."""
    cache_path: str | None = None
    """SQLite file of the content-addressed response cache; None = no cache."""
    max_cost_usd: float | None = None
    """Hard budget for the whole run (every worker and node together, across restarts and resumes): stop
    with a clear message once the teacher has cost this much; None = no budget."""
    max_failure_rate: float = 0.5
    """Stop the run when more than this fraction of the last 200 teacher requests (at least 8 finished)
    failed after their retries, even with on_failure='drop', naming the cause seen most. 1.0 = never. With
    on_failure='error' the first failed request already stops the run (naming the teacher): the guard is off."""
    options: dict[str, Any] = field(default_factory=dict)
    """Backend-specific options passed to the plugin's constructor."""

    def __post_init__(self) -> None:
        _plugin("teachers", "teacher.name", self.name)
        for key in ("model", "api_base", "api_key_env", "cache_path"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                shown = value if key not in ("api_key_env", "api_base") else "<not shown>"  # may hold a key
                raise _fail(f"teacher.{key}", shown, "null or a non-empty string")
        if self.api_key_env is not None:
            check_env_name(self.api_key_env)
        _number("teacher.temperature", self.temperature, low=0.0)
        _number("teacher.top_p", self.top_p, low=0.0, low_open=True, high=1.0)
        _int_at_least("teacher.max_concurrency", self.max_concurrency, 1)
        for key in ("requests_per_minute", "tokens_per_minute", "max_cost_usd"):
            value = getattr(self, key)
            if value is not None:
                _number(f"teacher.{key}", value, low=0.0, low_open=True)
        _number("teacher.max_failure_rate", self.max_failure_rate, low=0.0, low_open=True, high=1.0)
        _int_at_least("teacher.max_retries", self.max_retries, 0)
        _number("teacher.timeout_s", self.timeout_s, low=0.0, low_open=True)
        _choice("teacher.on_failure", self.on_failure, ON_FAILURE)
        _mapping("teacher.options", self.options)
        self.options = dict(self.options)


@dataclass
class OmniOPDConfig:
    """The OmniOPD algorithm's configuration (`omniopd:` in YAML). Defaults follow ALGORITHM.md."""

    chunks: int = 10
    """M: chunks audited per response (at most; never padded)."""
    samples: int = 10
    """N: teacher continuations per chunk."""
    chunk_len: int = 50
    """C: chunk length in student tokens; the teacher writes at most this many student-token-equivalents."""
    alpha: float = 1.0
    """Dirichlet concentration: pi_hat = (k_sem + alpha * pi_bar) / (N + alpha)."""
    beta: float = 0.1
    """Weight of the base-model KL anchor on unaudited tokens."""
    kl_anchor: str = "low_var_kl"
    """How verl estimates the KL anchor (the local engine always uses the exact full-vocabulary KL):
    'low_var_kl' (k3 at the sampled token, all response tokens, no extra resources) or 'topk_ref'
    (sum over the reference's top-k tokens of p_ref (log p_ref - log p_theta), unaudited tokens only,
    through verl's distillation loss with the reference model as "teacher": an extra resource pool)."""
    kl_topk: int = 64
    """k of kl_anchor='topk_ref' (-> distillation.distillation_loss.topk); bench_kl_anchor.py: k=64 -> 0.96 of the exact KL."""
    scheduler: str = "peak_entropy"
    """Anchor scheduler plugin (`omniopd_verl.schedulers`): peak_entropy, uniform, random, all, ..."""
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    """Options passed to the scheduler plugin's constructor."""
    similarity: str = "embedding"
    """Similarity plugin phi (`omniopd_verl.similarity`): embedding, ned, rouge_l, ..."""
    similarity_options: dict[str, Any] = field(default_factory=dict)
    """Options passed to the similarity plugin's constructor (e.g. model_path, batch_size)."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The teacher backend and its dependability / cost settings."""
    entropy_source: str = "exact"
    """'exact' (full-vocabulary, from the student's logits) or 'rollout_topk' (top-k log-probs + tail bound)."""
    rollout_topk: int = 20
    """k of the rollout engine's top-k log-probs when entropy_source='rollout_topk'."""
    advantage: str = POSTERIOR
    """'posterior' (pi_hat, the spec), or the ablations 'centered_prior' (pi_hat - pi_bar), 'centered_batch' (pi_hat - batch mean)."""
    task_reward_weight: float = 0.0
    """lambda: weight of an optional verified task reward mixed into the advantage (0 = pure OmniOPD)."""
    loss_agg_mode: str = "seq-mean-token-sum"
    """verl loss aggregation. The spec sums the loss per sequence; other modes are for ablations."""
    seed: int = 0
    """Base seed; teacher seeds derive from (seed, sample id, anchor) so reruns and caches agree."""
    run_id: str | None = None
    """Names the run's teacher ledger and its spend file (verl: default trainer.experiment_name). A resumed
    run with the same id continues the same budget; a new id starts from $0."""
    audit_validation: bool = False
    """verl: audit validation batches too (they are never trained on; by default they get no teacher call)."""

    def __post_init__(self) -> None:
        if isinstance(self.teacher, Mapping):
            self.teacher = _build(TeacherConfig, self.teacher, "teacher.")
        if not isinstance(self.teacher, TeacherConfig):
            raise _fail("teacher", self.teacher, "a mapping of teacher settings")
        _int_at_least("chunks", self.chunks, 1)
        _int_at_least("samples", self.samples, 1)
        _int_at_least("chunk_len", self.chunk_len, 1)
        _number("alpha", self.alpha, low=0.0, low_open=True)
        _number("beta", self.beta, low=0.0)
        _choice("kl_anchor", self.kl_anchor, KL_ANCHORS)
        _int_at_least("kl_topk", self.kl_topk, 1)
        _plugin("schedulers", "scheduler", self.scheduler)
        _plugin("similarity", "similarity", self.similarity)
        _mapping("scheduler_options", self.scheduler_options)
        _mapping("similarity_options", self.similarity_options)
        self.scheduler_options = dict(self.scheduler_options)
        self.similarity_options = dict(self.similarity_options)
        _choice("entropy_source", self.entropy_source, ENTROPY_SOURCES)
        _int_at_least("rollout_topk", self.rollout_topk, 1)
        _choice("advantage", self.advantage, ADVANTAGE_MODES)
        _number("task_reward_weight", self.task_reward_weight, low=0.0)
        _choice("loss_agg_mode", self.loss_agg_mode, LOSS_AGG_MODES)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise _fail("seed", self.seed, "an integer")
        if self.run_id is not None and (not isinstance(self.run_id, str) or not self.run_id.strip()):
            raise _fail("run_id", self.run_id, "null or a non-empty string")
        if not isinstance(self.audit_validation, bool):
            raise _fail("audit_validation", self.audit_validation, "true or false")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> OmniOPDConfig:
        """Build from a plain mapping or an OmegaConf DictConfig; unknown keys are errors."""
        if data is None:
            return cls()
        try:  # OmegaConf nodes -> plain containers, without importing omegaconf when not needed
            from omegaconf import DictConfig, OmegaConf

            if isinstance(data, DictConfig):
                data = OmegaConf.to_container(data, resolve=True)
        except ImportError:  # pragma: no cover - omegaconf is a dependency
            pass
        return _build(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_dataclass(cls: type, data: Any, prefix: str, node: str = "omniopd") -> Any:
    """`cls(**data)` for a config node, refusing non-mappings and unknown keys with the full key path."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{node}.{prefix.rstrip('.') or '<root>'}={data!r} is invalid: allowed a mapping")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise unknown_key(f"{node}.{prefix}{key}", names)
    return cls(**dict(data))


def unknown_key(full_key: str, allowed: list[str]) -> ConfigError:
    """ "unknown key omniopd.alpah; did you mean alpha?" (difflib), else the list of allowed keys."""
    import difflib

    close = difflib.get_close_matches(full_key.rsplit(".", 1)[-1], allowed, n=1)
    hint = f"did you mean {close[0]}?" if close else f"allowed keys: {allowed}"
    return ConfigError(f"unknown key {full_key}; {hint}")


_build = build_dataclass
