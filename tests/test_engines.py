"""One table of what each engine supports (omniopd_verl.engines), enforced by both engines' config builders."""

from __future__ import annotations

import pytest

from omniopd_verl.config import OmniOPDConfig
from omniopd_verl.engines import SUPPORT, check_engine_support, support_table_markdown
from omniopd_verl.errors import ConfigError


@pytest.mark.parametrize(
    ("settings", "engine", "error"),
    [
        (
            dict(entropy_source="rollout_topk"),
            "local",
            r"omniopd.entropy_source='rollout_topk' is not supported by the local",
        ),
        (dict(task_reward_weight=0.5), "local", r"omniopd.task_reward_weight=0.5 is not supported by the local"),
        (
            dict(kl_anchor="topk_ref"),
            "local",
            r"omniopd.kl_anchor='topk_ref' is not supported by the local engine .*exact full-vocabulary KL",
        ),
        (
            dict(),
            "verl",
            r"omniopd.entropy_source='exact' is not supported by the verl engine .*allowed 'rollout_topk'",
        ),
        (
            dict(advantage="centered_batch", task_reward_weight=0.5, entropy_source="rollout_topk"),
            "verl",
            r"task_reward_weight=0.5 is not supported by the verl engine \(advantage='centered_batch'",
        ),
    ],
)
def test_unsupported_settings_fail_with_key_value_engine_and_allowed(settings, engine, error):
    with pytest.raises(ConfigError, match=error):
        check_engine_support(OmniOPDConfig(**settings), engine)


@pytest.mark.parametrize(
    ("settings", "engine"),
    [
        (dict(), "local"),
        (dict(advantage="centered_batch"), "local"),
        (dict(advantage="centered_prior"), "local"),
        (dict(entropy_source="rollout_topk", task_reward_weight=1.0), "verl"),
        (dict(entropy_source="rollout_topk", advantage="centered_batch"), "verl"),
        (dict(scheduler="uniform"), "verl"),
        (
            dict(entropy_source="rollout_topk", kl_anchor="topk_ref", kl_topk=20),
            "verl",
        ),  # exact is fine on verl when the scheduler needs no entropy
    ],
)
def test_supported_settings_pass(settings, engine):
    check_engine_support(OmniOPDConfig(**settings), engine)


def test_the_local_config_builder_enforces_the_table(tmp_path):
    from omniopd_verl.local.config import load_run_config

    path = tmp_path / "run.yaml"
    path.write_text("omniopd: {task_reward_weight: 0.5}\nlocal: {}\n")
    with pytest.raises(ConfigError, match="not supported by the local engine"):
        load_run_config(str(path))


def test_docs_show_the_table():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    assert support_table_markdown() in docs, "docs/architecture.md must show engines.support_table_markdown()"
    assert len(SUPPORT) >= 4
