"""The local engine end to end on the tiny random model: a real Auditor, the real `transformers` teacher
(sharing the frozen reference weights), the real `ned` similarity, verl's real loss functions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from omniopd_verl.errors import ConfigError
from omniopd_verl.local.config import load_run_config
from omniopd_verl.local.loss import collate, omniopd_loss, response_logits
from omniopd_verl.runtime.generation import pad_token_id


def write_run(tmp_path: Path, model: str, gsm8k_subset: Path, *, steps=2, output="run", **local) -> Path:
    cfg = {
        "omniopd": {
            "chunks": 2,
            "samples": 2,
            "chunk_len": 4,
            "similarity": "ned",
            "beta": 0.1,
            "teacher": {"name": "transformers", "model": model},
        },
        "local": {
            "model": model,
            "steps": steps,
            "prompts_per_step": 2,
            "responses_per_prompt": 2,
            "micro_batch_size": 2,
            "max_new_tokens": 12,
            "lr": 1e-3,
            "progress": False,
            "output_dir": str(tmp_path / output),
            "data": {"path": str(gsm8k_subset / "train.jsonl"), "max_prompts": 50},
            **local,
        },
    }
    path = tmp_path / f"{output}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def fixed_batch_loss(trainer, rollouts, credit, batch):
    with torch.no_grad():
        terms = omniopd_loss(
            response_logits(trainer.model, batch),
            response_logits(trainer.ref_model, batch),
            batch.response_ids_BT,
            credit.advantage_BT,
            batch.response_mask_BT,
            credit.unaudited_mask_BT,
            beta=trainer.run.omniopd.beta,
            actor_config=trainer.actor_config,
            global_batch_size=len(rollouts),
            batch_num_tokens=int(batch.response_mask_BT.sum()),
        )
    return float(terms.l_chunk) + trainer.run.omniopd.beta * float(terms.l_kl)


def test_one_step_changes_parameters_and_lowers_the_loss_on_a_fixed_batch(tmp_path, tiny_model_path, gsm8k_subset):
    from omniopd_verl.audit.credit import audits_to_token_credit
    from omniopd_verl.local.methods import OmniOPD
    from omniopd_verl.local.train import LocalTrainer
    from omniopd_verl.local.update import Timer

    run = load_run_config(write_run(tmp_path, tiny_model_path, gsm8k_subset))
    trainer = LocalTrainer(run)
    try:
        rollouts = trainer.rollout(trainer.train_problems[:2], seed=1, uid_prefix="t-", responses_per_prompt=2)
        audits = trainer.audit(rollouts)
        assert sum(len(a.chunks) for a in audits) > 0
        batch = collate(
            [r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts], pad_token_id(trainer.tokenizer)
        )
        credit = audits_to_token_credit(audits, batch.response_mask_BT)
        before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        loss_before = fixed_batch_loss(trainer, rollouts, credit, batch)
        step = OmniOPD().train_on(trainer, rollouts, audits)
        metrics = trainer.apply_credit(step.prompts, step.responses, step.credit, beta=step.beta, timer=Timer())
        loss_after = fixed_batch_loss(trainer, rollouts, credit, batch)
        changed = [k for k, v in trainer.model.named_parameters() if not torch.equal(v, before[k])]
        assert len(changed) == len(before)
        assert loss_after < loss_before
        assert metrics["loss/l_chunk"] + 0.1 * metrics["loss/l_kl"] == pytest.approx(loss_before, rel=1e-4)
        # the reference is frozen: it neither moved nor collected gradients
        assert all(p.grad is None and not p.requires_grad for p in trainer.ref_model.parameters())
    finally:
        trainer.close()


def test_resume_equals_uninterrupted_training(tmp_path, tiny_model_path, gsm8k_subset):
    from safetensors.torch import load_file

    from omniopd_verl.local.train import run

    # with a 2-step warmup: the restarted run continues the schedule where it stopped
    straight = write_run(tmp_path, tiny_model_path, gsm8k_subset, steps=3, output="straight", lr_warmup_steps=2)
    assert run(str(straight), []) == 0
    # the same run, stopped after step 1 (checkpoint), then restarted with the full step count
    split = write_run(tmp_path, tiny_model_path, gsm8k_subset, steps=3, output="split", lr_warmup_steps=2)
    assert run(str(split), ["local.steps=1"]) == 0
    assert run(str(split), []) == 0

    a = load_file(str(tmp_path / "straight" / "checkpoints" / "step_3" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "checkpoints" / "step_3" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    rows_a = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == [1, 2, 3]
    assert [r["train/lr"] for r in rows_a] == [r["train/lr"] for r in rows_b] == [1e-3 / 2, 1e-3, 1e-3]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in ("loss/l_chunk", "loss/l_kl", "audit/pi_hat_mean", "train/grad_norm"):
            assert ra[key] == rb[key], key
    assert (tmp_path / "split" / "tensorboard").is_dir()
    assert (tmp_path / "split" / "last_step_audits.jsonl").exists()
    assert "<html" in (tmp_path / "split" / "last_step_report.html").read_text()


def test_config_errors_name_key_value_and_allowed(tmp_path, gsm8k_subset):
    path = write_run(tmp_path, "smollm2-135m-instruct", gsm8k_subset)
    with pytest.raises(ConfigError, match=r"local\.lr=-1\.0 is invalid: allowed a finite number > 0"):
        load_run_config(path, ["local.lr=-1.0"])
    with pytest.raises(ConfigError, match=r"unknown key local\.stepz; did you mean steps\?"):
        load_run_config(path, ["local.stepz=3"])
    with pytest.raises(ConfigError, match=r"local\.device='tpu' is invalid: allowed one of \['auto', 'cpu', 'cuda'\]"):
        load_run_config(path, ["local.device=tpu"])
    with pytest.raises(ConfigError, match=r"omniopd\.chunks=0 is invalid"):
        load_run_config(path, ["omniopd.chunks=0"])
    with pytest.raises(ConfigError, match=r"override 'steps' is invalid: allowed key=value"):
        load_run_config(path, ["steps"])
    with pytest.raises(ConfigError, match=r"local\.data\.heldout_prompts=-2 is invalid"):
        load_run_config(path, ["local.data.heldout_prompts=-2"])
    with pytest.raises(ConfigError, match=r"local\.lr_warmup_steps=-1 is invalid: allowed an integer >= 0"):
        load_run_config(path, ["local.lr_warmup_steps=-1"])
    with pytest.raises(ConfigError, match=r"local\.save_final='sometimes' is invalid: allowed true or false"):
        load_run_config(path, ["local.save_final=sometimes"])
    # settings the local engine cannot honour are refused, not silently ignored
    with pytest.raises(ConfigError, match=r"omniopd\.task_reward_weight=0\.5 is not supported by the local engine"):
        load_run_config(path, ["omniopd.task_reward_weight=0.5"])
    with pytest.raises(
        ConfigError, match=r"omniopd\.entropy_source='rollout_topk' is not supported by the local engine"
    ):
        load_run_config(path, ["omniopd.entropy_source=rollout_topk"])


@pytest.mark.parametrize("variant", [{"control": "shuffle_pi_hat"}, {"method": "token_opd"}])
def test_paired_heldout_evaluation_control_and_token_opd_end_to_end(tmp_path, tiny_model_path, gsm8k_subset, variant):
    """One step with the held-out paired metric: the control arm and the token-OPD baseline run through fit()."""
    from omniopd_verl.local.paired_eval import GAP_METRIC
    from omniopd_verl.local.train import LocalTrainer

    path = write_run(
        tmp_path,
        tiny_model_path,
        gsm8k_subset,
        steps=1,
        tensorboard=False,
        data={
            "path": str(gsm8k_subset / "train.jsonl"),
            "heldout_path": str(gsm8k_subset / "test.jsonl"),
            "heldout_prompts": 2,
            "max_prompts": 50,
        },
        **variant,
    )
    cfg = load_run_config(str(path), ["++omniopd.teacher.options.model=reference"])
    trainer = LocalTrainer(cfg)
    assert trainer.auditor.teacher is not None
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
    assert set(summary["eval"]["paired"]) == {"gap"}  # no steered teacher here, so no token-set mass
    paired = summary["eval"]["paired"]["gap"]
    assert paired["metric"] == GAP_METRIC and paired["prefixes"] >= 1 and paired["prompts"] <= 2
    lo, hi = paired["ci95"]
    assert lo <= paired["effect"] <= hi and paired["effect"] != 0.0  # one lr-1e-3 step moves the student
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert len(saved["before"]["gap"]) == paired["prefixes"] == len(saved["paired"]["after"]["gap"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    if variant.get("method") == "token_opd":
        assert rows[0]["loss/l_kl"] == 0.0 and rows[0]["teacher/calls"] == 4.0 and "audit/pi_hat_mean" not in rows[0]
    else:
        assert rows[0]["audit/pi_hat_mean"] > 0
