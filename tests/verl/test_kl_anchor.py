"""omniopd.kl_anchor=topk_ref: the registered masked loss pinned against a naive reference, and the
verl keys the composition sets, exactly.

The naive reference, per response token t of row b (the position predicting y_t):
    kl_bt = max(0, sum_{v in top-k of pi_ref} p_ref(v) (log p_ref(v) - log p_theta(v)))   if t is unaudited
    kl_bt = 0                                                                               if t is audited
(verl's forward_kl_topk clamps the top-k sum at 0: without the tail it can be negative.) It is computed
here from the full reference and student logits with plain loops, not with verl's code.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from omniopd_verl.errors import ConfigError
from omniopd_verl.verl_integration.names import AUDIT_MASK_KEY, TOPK_REF_LOSS_NAME

PROMPT_LENS = [3, 2, 4]
RESPONSE_LENS = [5, 3, 4]
AUDITED = [[0, 1, 1, 0, 0], [1, 1, 1], [0, 0, 0, 0]]  # one row fully audited, one not audited at all
V, K = 40, 6


def _nested(rows):
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def _batch(with_mask: bool = True):
    """A fixed micro-batch as verl's FSDP actor sees it (jagged, remove-padding layout)."""
    import verl.trainer.distillation.fsdp.losses as fsdp_losses
    from verl.workers.config import DistillationConfig, DistillationLossConfig

    import omniopd_verl.verl_integration.plugin  # noqa: F401 - registers the loss

    g = torch.Generator().manual_seed(0)
    seq_lens = [p + r for p, r in zip(PROMPT_LENS, RESPONSE_LENS, strict=True)]
    nnz = sum(seq_lens)
    student_logits = torch.randn(nnz, V, generator=g, dtype=torch.float64).float() * 2
    ref_logits = student_logits + torch.randn(nnz, V, generator=g).float()
    ref_lp = torch.log_softmax(ref_logits, -1)
    top_lp, top_ids = ref_lp.topk(K, -1)
    offsets = torch.tensor([0, *torch.tensor(seq_lens).cumsum(0).tolist()])
    split = lambda x: [x[offsets[i] : offsets[i + 1]] for i in range(len(seq_lens))]  # noqa: E731
    cfg = DistillationConfig(distillation_loss=DistillationLossConfig(loss_mode=TOPK_REF_LOSS_NAME, topk=K))
    out = fsdp_losses.compute_forward_kl_topk(
        student_logits=student_logits[None],
        teacher_topk_log_probs=_nested(split(top_lp)),
        teacher_topk_ids=_nested(split(top_ids)),
        config=cfg,
        data_format="thd",
    )
    model_output = {
        name: torch.nested.nested_tensor_from_jagged(out[name][0], offsets)
        for name in ("distillation_losses", "student_mass", "teacher_mass")
    }
    g2 = torch.Generator().manual_seed(1)
    fields = {
        "prompts": _nested([torch.randint(0, V, (p,), generator=g2) for p in PROMPT_LENS]),
        "responses": _nested([torch.randint(0, V, (r,), generator=g2) for r in RESPONSE_LENS]),
        "response_mask": _nested([torch.ones(r, dtype=torch.int64) for r in RESPONSE_LENS]),
    }
    if with_mask:
        fields[AUDIT_MASK_KEY] = _nested([torch.tensor(m, dtype=torch.int64) for m in AUDITED])
    data = TensorDict(fields, batch_size=[len(seq_lens)])
    return cfg, model_output, data, student_logits, ref_logits, offsets


def _naive(student_logits, ref_logits, offsets):
    out = torch.zeros(len(RESPONSE_LENS), max(RESPONSE_LENS))
    for b, (p, r) in enumerate(zip(PROMPT_LENS, RESPONSE_LENS, strict=True)):
        for t in range(r):
            if AUDITED[b][t]:
                continue
            pos = int(offsets[b]) + p + t - 1  # the logits at pos predict response token t
            lp_ref = torch.log_softmax(ref_logits[pos].double(), -1)
            lp_theta = torch.log_softmax(student_logits[pos].double(), -1)
            total = 0.0
            for v in torch.argsort(lp_ref, descending=True)[:K].tolist():
                total += float(lp_ref[v].exp() * (lp_ref[v] - lp_theta[v]))
            out[b, t] = max(0.0, total)
    return out


def test_masked_topk_loss_equals_the_naive_reference_on_unaudited_tokens_and_zero_on_audited():
    from verl.trainer.distillation.losses import get_distillation_loss_fn, get_distillation_loss_settings

    cfg, model_output, data, student_logits, ref_logits, offsets = _batch()
    assert get_distillation_loss_settings(TOPK_REF_LOSS_NAME).use_topk  # verl computes the top-k KL for it
    losses_BT, metrics = get_distillation_loss_fn(TOPK_REF_LOSS_NAME)(
        config=None, distillation_config=cfg, model_output=model_output, data=data
    )
    expected_BT = _naive(student_logits, ref_logits, offsets)
    assert losses_BT.shape == expected_BT.shape
    torch.testing.assert_close(losses_BT.double(), expected_BT.double(), atol=1e-5, rtol=1e-4)
    audited = torch.zeros_like(expected_BT, dtype=torch.bool)
    for b, row in enumerate(AUDITED):
        audited[b, : len(row)] = torch.tensor(row, dtype=torch.bool)
    assert (losses_BT[audited] == 0).all()
    unaudited = ~audited & (torch.arange(max(RESPONSE_LENS))[None] < torch.tensor(RESPONSE_LENS)[:, None])
    assert (losses_BT[unaudited] > 0).all()  # the reference differs from the student: the anchor is live
    assert metrics["kl_anchor/unaudited_token_fraction"] == pytest.approx(unaudited.sum().item() / sum(RESPONSE_LENS))


def test_masked_topk_loss_without_the_audit_mask_names_the_field():
    from verl.trainer.distillation.losses import get_distillation_loss_fn

    cfg, model_output, data, *_ = _batch(with_mask=False)
    with pytest.raises(ConfigError, match=f"{AUDIT_MASK_KEY}.*omniopd_agent"):
        get_distillation_loss_fn(TOPK_REF_LOSS_NAME)(
            config=None, distillation_config=cfg, model_output=model_output, data=data
        )


# --- the composition: `omniopd-verl train ... omniopd.kl_anchor=topk_ref` sets exactly these verl keys ---

MODEL = "actor_rollout_ref.model.path=/models/student"
# the shipped configs name no teacher server, and train checks the teacher plugin's config before it composes
TEACHER = ("omniopd.teacher.model=local-teacher", "omniopd.teacher.api_base=http://127.0.0.1:8000/v1")


def _dry_run(capsys, *argv: str):
    from omegaconf import OmegaConf

    from omniopd_verl.cli.main import main

    rc = main(["train", "--dry-run", *argv, *TEACHER])
    out, err = capsys.readouterr()
    return rc, (OmegaConf.create(out) if rc == 0 else None), err


def test_topk_ref_sets_the_distillation_keys_exactly(capsys):
    rc, cfg, err = _dry_run(capsys, MODEL, "omniopd.kl_anchor=topk_ref", "omniopd.kl_topk=20", "omniopd.beta=0.05")
    assert rc == 0, err
    d = cfg.distillation
    assert d.enabled is True and (d.n_gpus_per_node, d.nnodes) == (1, 1)
    assert d.distillation_loss.loss_mode == TOPK_REF_LOSS_NAME
    assert d.distillation_loss.topk == 20 and d.distillation_loss.distillation_loss_coef == 0.05
    assert d.distillation_loss.use_task_rewards is True and d.distillation_loss.use_policy_gradient is False
    assert list(d.teacher_models) == ["teacher_model"]
    assert d.teacher_models.teacher_model.model_path == "/models/student"  # the reference = initial checkpoint
    assert d.teacher_models.teacher_model.inference.tensor_model_parallel_size == 1
    assert d.teacher_models.teacher_model.inference.name == "vllm"  # = the rollout engine on GPU
    assert cfg.actor_rollout_ref.actor.use_kl_loss is False  # verl's k3 KL loss is replaced, not added
    assert cfg.algorithm.use_kl_in_reward is False
    assert cfg.actor_rollout_ref.actor.loss_agg_mode == "seq-mean-token-sum"


def test_default_anchor_is_low_var_kl_without_a_teacher_pool(capsys):
    rc, cfg, err = _dry_run(capsys, MODEL)
    assert rc == 0, err
    assert cfg.omniopd.kl_anchor == "low_var_kl" and cfg.distillation.enabled is False
    assert cfg.actor_rollout_ref.actor.use_kl_loss is True
    assert cfg.actor_rollout_ref.actor.kl_loss_type == "low_var_kl"


def test_topk_ref_in_cpu_mode_serves_the_reference_with_the_hf_rollout(capsys):
    rc, cfg, err = _dry_run(capsys, "--cpu", MODEL, "omniopd.kl_anchor=topk_ref")
    assert rc == 0, err
    assert cfg.actor_rollout_ref.rollout.name == "hf"
    assert cfg.distillation.teacher_models.teacher_model.inference.name == "sglang"  # aliased to hf on CPU
    assert cfg.ray_kwargs.ray_init.num_gpus == 2 and cfg.ray_kwargs.ray_init.num_cpus == 4  # + the teacher pool


def test_main_ppo_overlay_alone_sets_the_anchor():
    from omniopd_verl.cli.train import compose_verl_config, config_location, validate

    config_dir, name = config_location(None, "fsdp")
    cfg = compose_verl_config(config_dir, name, [MODEL, *TEACHER, "+omniopd_kl_anchor=topk_ref"])
    validate(cfg)
    assert cfg.omniopd.kl_anchor == "topk_ref" and cfg.distillation.distillation_loss.topk == 64


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("distillation.distillation_loss.topk=32", "distillation.distillation_loss.topk=32"),
        ("actor_rollout_ref.actor.use_kl_loss=true", "actor_rollout_ref.actor.use_kl_loss=True"),
        ("distillation.distillation_loss.loss_mode=forward_kl_topk", "loss_mode='forward_kl_topk'"),
        ("distillation.teacher_models.teacher_model.model_path=/other", "model_path=['/other']"),
        ("distillation.distillation_loss.distillation_loss_coef=1.0", "distillation_loss_coef=1.0"),
    ],
)
def test_inconsistent_topk_ref_keys_are_rejected_naming_the_key(capsys, override, key):
    rc, _, err = _dry_run(capsys, MODEL, "+omniopd_kl_anchor=topk_ref", override)
    assert rc == 2 and key in err and "kl_anchor" in err, err


def test_topk_ref_is_refused_by_the_local_engine():
    from omniopd_verl.config import OmniOPDConfig
    from omniopd_verl.engines import check_engine_support

    with pytest.raises(ConfigError, match=r"kl_anchor='topk_ref' is not supported by the local engine"):
        check_engine_support(OmniOPDConfig(kl_anchor="topk_ref"), "local")


def test_the_worker_side_check_refuses_topk_ref_without_the_overlay():
    """What the omniopd_agent loop checks in a plain main_ppo launch (no CLI): no silent fallback."""
    from omniopd_verl.cli.train import compose_verl_config, config_location
    from omniopd_verl.verl_integration.checks import check_kl_anchor_wiring, omniopd_config_from_verl

    config_dir, name = config_location(None, "fsdp")
    cfg = compose_verl_config(config_dir, name, [MODEL, "omniopd.kl_anchor=topk_ref"])
    with pytest.raises(ConfigError, match=r"kl_anchor='topk_ref' with distillation.*\+omniopd_kl_anchor=topk_ref"):
        check_kl_anchor_wiring(cfg, omniopd_config_from_verl(cfg))
    cfg = compose_verl_config(config_dir, name, [MODEL, "+omniopd_kl_anchor=topk_ref", "omniopd.kl_anchor=low_var_kl"])
    with pytest.raises(ConfigError, match=r"loss_mode='omniopd_forward_kl_topk_unaudited' is invalid with"):
        check_kl_anchor_wiring(cfg, omniopd_config_from_verl(cfg))
    cfg = compose_verl_config(config_dir, name, [MODEL, *TEACHER, "+omniopd_kl_anchor=topk_ref"])
    check_kl_anchor_wiring(cfg, omniopd_config_from_verl(cfg))
