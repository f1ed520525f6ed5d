"""Which OmniOPD settings each engine supports: one table, enforced here, shown in docs/architecture.md.

Both engines call `check_engine_support(config, engine)` when they build their run, before any model
is loaded; an unsupported setting is a ConfigError naming the key, the value, the engine and what is
allowed there. Settings not listed are supported by both engines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from omniopd_verl.config import CENTERED_BATCH, OmniOPDConfig
from omniopd_verl.errors import ConfigError

ENGINES = ("local", "verl")


@dataclass(frozen=True)
class Rule:
    """A setting (`applies`) and, per engine, None if supported or why not (with what is allowed)."""

    setting: str
    key: str  # the config key named in the error
    applies: Callable[[OmniOPDConfig, bool], bool]  # (config, scheduler needs entropy) -> the setting is in use
    local: str | None
    verl: str | None


SUPPORT: tuple[Rule, ...] = (
    Rule(
        "entropy_source='exact' with an entropy-based scheduler",
        "entropy_source",
        lambda c, needs_entropy: c.entropy_source == "exact" and needs_entropy,
        local=None,
        verl=(
            "allowed 'rollout_topk' (verl 0.9.1 computes exact entropies only in the actor's old-log-prob pass, "
            "after the reward stage where the audit runs); or a scheduler that needs no entropy "
            "(uniform, random, all); or --engine local for exact entropies"
        ),
    ),
    Rule(
        "entropy_source='rollout_topk'",
        "entropy_source",
        lambda c, _: c.entropy_source == "rollout_topk",
        local="allowed 'exact' (the local engine has the student's full logits)",
        verl=None,
    ),
    Rule(
        "task_reward_weight > 0",
        "task_reward_weight",
        lambda c, _: c.task_reward_weight != 0,
        local="allowed 0 (the local engine has no verifier in its loop; mix a task reward in on verl, docs/verl.md)",
        verl=None,
    ),
    Rule(
        "kl_anchor='topk_ref'",
        "kl_anchor",
        lambda c, _: c.kl_anchor == "topk_ref",
        local=(
            "allowed 'low_var_kl' (kl_anchor chooses verl's approximation; the local engine always uses the exact "
            "full-vocabulary KL on unaudited tokens, ALGORITHM.md step 7)"
        ),
        verl=None,
    ),
    Rule(
        "advantage='centered_batch' with task_reward_weight > 0",
        "task_reward_weight",
        lambda c, _: c.advantage == CENTERED_BATCH and c.task_reward_weight != 0,
        local="allowed task_reward_weight=0 (centring would subtract the task reward's batch mean too)",
        verl="allowed task_reward_weight=0 (centring would subtract the task reward's batch mean too)",
    ),
)
"""The table (docs/architecture.md renders it). advantage 'posterior', 'centered_prior' and
'centered_batch', every scheduler, similarity, teacher and loss_agg_mode: both engines."""


def check_engine_support(config: OmniOPDConfig, engine: str, *, scheduler_needs_entropy: bool | None = None) -> None:
    """Raise ConfigError for the first setting of `config` that `engine` does not support.

    First checks that the configured plugin names are installed (`registry.check_plugin_names`).
    `scheduler_needs_entropy` defaults to the configured scheduler plugin's `needs_entropy` (loaded).
    """
    from omniopd_verl import registry

    if engine not in ENGINES:
        raise ConfigError(f"engine={engine!r} is invalid: allowed one of {list(ENGINES)}")
    registry.check_plugin_names(config)  # plugin names are checked where runs are built, not in the config
    if scheduler_needs_entropy is None:
        scheduler_needs_entropy = bool(getattr(registry.load("schedulers", config.scheduler), "needs_entropy", True))
    for rule in SUPPORT:
        why = getattr(rule, engine)
        if why is not None and rule.applies(config, scheduler_needs_entropy):
            raise ConfigError(
                f"omniopd.{rule.key}={getattr(config, rule.key)!r} is not supported by the {engine} engine "
                f"({rule.setting}; omniopd.scheduler={config.scheduler!r}, omniopd.advantage={config.advantage!r}): "
                f"{why}"
            )


def support_table_markdown() -> str:
    """The table as Markdown (docs/architecture.md is checked against it by a test)."""
    lines = ["| setting | local engine | verl engine |", "|---|---|---|"]
    for rule in SUPPORT:
        cells = ["yes" if why is None else f"no: {why}" for why in (rule.local, rule.verl)]
        lines.append(f"| {rule.setting} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)
