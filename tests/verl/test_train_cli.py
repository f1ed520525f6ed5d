"""`omniopd-verl train` on the verl engine: composition, validation and the no-GPU stop, without Ray.

The dry run composes with Hydra exactly as main_ppo does and runs OmniOPD's checks and verl's own
validate_config; the printed YAML is parsed back and compared with the overrides given.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from omniopd_verl.cli.main import main

MODEL = "actor_rollout_ref.model.path=/models/student"
# the shipped configs name no teacher server; the dry run builds the teacher plugin, which needs one
TEACHER = ("omniopd.teacher.model=local-teacher", "omniopd.teacher.api_base=http://127.0.0.1:8000/v1")


def dry_run(capsys, *argv: str):
    rc = main(["train", "--dry-run", *argv])
    out, err = capsys.readouterr()
    return rc, (OmegaConf.create(out) if rc == 0 else None), err


def test_fsdp_config_composes_validates_and_applies_overrides(capsys):
    rc, cfg, err = dry_run(capsys, MODEL, *TEACHER, "omniopd.alpha=2.0", "omniopd.beta=0.05", "omniopd.similarity=ned")
    assert rc == 0, err
    assert cfg.omniopd.alpha == 2.0 and cfg.omniopd.similarity == "ned"
    assert cfg.actor_rollout_ref.actor.strategy == "fsdp"
    assert cfg.actor_rollout_ref.actor.kl_loss_coef == 0.05  # interpolated from omniopd.beta
    assert cfg.actor_rollout_ref.actor.use_kl_loss is True
    assert cfg.actor_rollout_ref.actor.loss_agg_mode == "seq-mean-token-sum"
    assert cfg.algorithm.adv_estimator == "omniopd" and cfg.algorithm.omniopd.advantage == "posterior"
    assert cfg.reward.reward_manager.name == "omniopd"
    assert cfg.actor_rollout_ref.rollout.agent.default_agent_loop == "omniopd_agent"
    assert cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path.endswith("omniopd_verl/config/agent_loops.yaml")
    assert "is valid" in err


def test_megatron_config_exposes_parallelism(capsys):
    rc, cfg, err = dry_run(
        capsys,
        "--config-name",
        "megatron",
        MODEL,
        "actor_rollout_ref.actor.megatron.tensor_model_parallel_size=2",
        "actor_rollout_ref.actor.megatron.pipeline_model_parallel_size=2",
        "omniopd.teacher.name=litellm",
        "omniopd.teacher.model=anthropic/claude-haiku-4-5",
    )
    assert rc == 0, err
    assert cfg.actor_rollout_ref.actor.strategy == "megatron"
    assert cfg.actor_rollout_ref.actor.megatron.tensor_model_parallel_size == 2
    assert cfg.actor_rollout_ref.actor.megatron.pipeline_model_parallel_size == 2
    assert cfg.actor_rollout_ref.ref.megatron.tensor_model_parallel_size == 2  # verl's ref follows the actor
    assert cfg.omniopd.teacher.name == "litellm"


@pytest.mark.parametrize(
    "override, key",
    [
        ("omniopd.alpha=-1", "omniopd.alpha"),
        ("omniopd.chunks=0", "omniopd.chunks"),
        ("omniopd.teacher.name=no_such_teacher", "omniopd.teacher.name"),
        ("omniopd.similarity=no_such_similarity", "omniopd.similarity"),
        ("+omniopd.bogus=1", "omniopd.bogus"),
        ("omniopd.entropy_source=exact", "omniopd.entropy_source"),
        ("algorithm.adv_estimator=grpo", "algorithm.adv_estimator"),
        ("trainer.use_v1=false", "trainer.use_v1"),
        ("reward.reward_manager.name=naive", "reward.reward_manager"),
        ("actor_rollout_ref.actor.kl_loss_coef=0.5", "actor_rollout_ref.actor.kl_loss_coef"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(capsys, override, key):
    rc, _, err = dry_run(capsys, MODEL, override)
    assert rc == 2
    assert key in err, err


def test_recipe_yaml_composes_from_the_packaged_bases(capsys, tmp_path):
    recipe = tmp_path / "my_recipe.yaml"
    recipe.write_text(
        textwrap.dedent(
            """\
            hydra:
              searchpath:
                - pkg://omniopd_verl.config
                - pkg://verl.trainer.config
            defaults:
              - omniopd_megatron_base
              - _self_
            omniopd:
              samples: 4
              teacher: {name: openai_completions, model: Qwen/Qwen3-32B, api_base: "http://127.0.0.1:8000/v1"}
            actor_rollout_ref:
              actor: {megatron: {tensor_model_parallel_size: 4}}
            """
        )
    )
    rc, cfg, err = dry_run(capsys, "--config", str(recipe), MODEL, "omniopd.alpha=0.5")
    assert rc == 0, err
    assert cfg.omniopd.samples == 4 and cfg.omniopd.alpha == 0.5
    assert cfg.omniopd.teacher.model == "Qwen/Qwen3-32B"
    assert cfg.actor_rollout_ref.actor.strategy == "megatron"
    assert cfg.actor_rollout_ref.actor.megatron.tensor_model_parallel_size == 4


def test_launch_without_gpu_runs_verl_in_cpu_mode(capsys, monkeypatch):
    """No GPU: main_ppo is launched with the CPU overlay and VERL_PLATFORM=cpu, after a message saying
    what CPU mode is for (the run itself: tests/verl/test_main_ppo_cpu.py and recipes/verl_cpu_smoke)."""
    import omniopd_verl.cli.train as train_cli

    launched = {}

    def fake_call(cmd, env):  # subprocess.call: record instead of starting Ray
        launched.update(cmd=cmd, env=env)
        return 0

    monkeypatch.setattr(train_cli, "_has_gpu", lambda: False)
    monkeypatch.setattr(train_cli.subprocess, "call", fake_call)
    rc = main(["train", MODEL, *TEACHER])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "CPU mode" in err and "no GPU" in err and "not train a real model" in err
    assert launched["cmd"][1:3] == ["-m", "verl.trainer.main_ppo"] and "+omniopd_platform=cpu" in launched["cmd"]
    assert launched["env"]["VERL_PLATFORM"] == "cpu"


def test_cpu_dry_run_shows_the_cpu_overlay(capsys):
    rc = main(["train", "--cpu", "--dry-run", MODEL, *TEACHER])
    out, err = capsys.readouterr()
    assert rc == 0, err
    cfg = OmegaConf.create(out)
    assert cfg.actor_rollout_ref.rollout.name == "hf" and cfg.trainer.v1.trainer_mode == "cpu_sync"
    assert cfg.actor_rollout_ref.actor.strategy == "fsdp2" and cfg.trainer.device == "cpu"


def test_unknown_config_name_lists_the_shipped_ones(capsys):
    rc, _, err = dry_run(capsys, "--config-name", "nope")
    assert rc == 2 and "fsdp" in err and "megatron" in err


def test_main_ppo_composes_the_packaged_config_itself():
    """verl's own entry point finds our config by pkg:// and composes the same tree (--cfg job: no run)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "verl.trainer.main_ppo",
            "--config-path=pkg://omniopd_verl.config",
            "--config-name=omniopd_fsdp",
            "--cfg=job",
            "--resolve",
            MODEL,
            "omniopd.alpha=3.5",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = OmegaConf.create(out.stdout)
    assert cfg.omniopd.alpha == 3.5 and cfg.algorithm.adv_estimator == "omniopd"
    assert cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path.endswith("agent_loops.yaml")


def test_local_engine_is_delegated_and_takes_a_config_file(capsys):
    rc = main(["train", "--engine", "local", "--config-name", "fsdp"])
    assert rc == 2 and "--config FILE.yaml" in capsys.readouterr().err
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "quickstart_cpu" / "quickstart_cpu.yaml"
    rc = main(["train", "--engine", "local", "--dry-run", "--config", str(recipe)])
    out = capsys.readouterr().out
    cfg = OmegaConf.create(out)  # the local engine's own resolved run config, as YAML
    assert rc == 0 and cfg.local.model and cfg.omniopd.teacher.name


def test_local_engine_bad_value_is_a_message_not_a_traceback(capsys):
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "quickstart_cpu" / "quickstart_cpu.yaml"
    rc = main(["train", "--engine", "local", "--dry-run", "--config", str(recipe), "local.lr=-1"])
    err = capsys.readouterr().err
    assert rc == 2 and "local.lr=-1 is invalid" in err and "Traceback" not in err
    rc = main(["train", "--engine", "local", "--dry-run"])
    assert rc == 2 and "needs --config FILE.yaml" in capsys.readouterr().err
