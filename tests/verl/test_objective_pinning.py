"""The verl objective, pinned: the composed configs set what docs/verl.md promises, and on a fixed batch
the loss verl's actor computes (`verl.workers.utils.losses.ppo_loss`, the function the FSDP engine
calls, with the ActorConfig built from our composed config) equals ALGORITHM.md steps 6-7 as
deployed on verl, computed independently:

    L = (1/B) sum_b [ -sum_k pi_hat_k sum_{t in c_k} log pi(y_t) ]             (step 6, seq-mean-token-sum)
      + beta (1/B) sum_b sum_{t in response} k3(log pi, log pi_ref)           (step 7 as deployed: low_var_kl
        k3 = exp(ref - logp) - (ref - logp) - 1, clamped to [-10, 10]        on every response token)

At the on-policy point (old log-probs = current, one optimizer step per batch) the PPO ratio is 1, so
the gradient of verl's clipped loss is the gradient of L; its value is that of the policy-gradient
surrogate (log pi replaced by the ratio exp(log pi - log pi_old) = 1), also written out here.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from omniopd_verl.cli.train import CONFIG_NAMES, compose_verl_config, config_location

MODEL = "actor_rollout_ref.model.path=/models/student"
RECIPES = {
    "verl_cpu_smoke": "recipes/verl_cpu_smoke/verl_cpu_smoke.yaml",
    "qwen3_32b": "recipes/omniopd_qwen3_1p7b_from_qwen3_32b/omniopd_qwen3_1p7b_from_qwen3_32b.yaml",
}


def composed(name: str):
    if name in CONFIG_NAMES:
        config_dir, config_name = config_location(None, name)
    else:
        config_dir, config_name = config_location(RECIPES[name], None)
    cfg = compose_verl_config(config_dir, config_name, [MODEL])
    OmegaConf.resolve(cfg)
    return cfg


@pytest.mark.parametrize("name", ["fsdp", "megatron", "verl_cpu_smoke", "qwen3_32b"])
def test_composed_configs_set_the_promised_objective(name):
    cfg = composed(name)
    actor = cfg.actor_rollout_ref.actor
    assert actor.policy_loss.loss_mode == "vanilla"
    assert actor.use_kl_loss is True and actor.kl_loss_type == "low_var_kl"
    assert actor.kl_loss_coef == cfg.omniopd.beta
    assert actor.loss_agg_mode == "seq-mean-token-sum" == cfg.omniopd.loss_agg_mode
    assert actor.entropy_coeff == 0
    assert actor.ppo_mini_batch_size == cfg.data.train_batch_size and actor.ppo_epochs == 1
    assert cfg.algorithm.adv_estimator == "omniopd" and cfg.algorithm.use_kl_in_reward is False


def naive_objective(logp_BT, ref_BT, mask_BT, chunks, beta, old_BT=None):
    """ALGORITHM.md steps 6-7 as deployed on verl, written out term by term with Python loops.
    With `old_BT`, log pi in L_chunk is replaced by the PPO ratio exp(log pi - log pi_old) (the surrogate)."""
    B = logp_BT.shape[0]
    total = 0.0
    for b in range(B):
        l_chunk = 0.0
        for start, end, pi_hat in chunks[b]:
            for t in range(start, end):
                term = logp_BT[b, t] if old_BT is None else torch.exp(logp_BT[b, t] - old_BT[b, t])
                l_chunk = l_chunk - pi_hat * term
        l_kl = 0.0
        for t in range(int(mask_BT[b].sum())):
            d = ref_BT[b, t] - logp_BT[b, t]
            l_kl = l_kl + torch.clamp(torch.exp(d) - d - 1, -10, 10)
        total = total + l_chunk + beta * l_kl
    return total / B


def test_verls_actor_loss_with_our_advantages_equals_the_spec_objective():
    from tensordict import TensorDict
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.utils.losses import ppo_loss

    from omniopd_verl.verl_integration.estimator import omniopd_adv_estimator

    cfg = composed("fsdp")
    actor_cfg = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    beta = float(cfg.omniopd.beta)
    torch.manual_seed(0)
    B, P, R = 3, 4, 7
    lengths = [7, 5, 6]
    chunks = [[(1, 3, 0.7), (4, 7, 0.2)], [(0, 2, 0.9)], []]  # (start, end, pi_hat) per row; row 2 unaudited

    mask_BT = torch.zeros(B, R)
    scores_BT = torch.zeros(B, R)
    for b, n in enumerate(lengths):
        mask_BT[b, :n] = 1
        for start, end, pi_hat in chunks[b]:
            scores_BT[b, start:end] = pi_hat  # what the omniopd agent loop writes as rm_scores
    advantages_BT, _ = omniopd_adv_estimator(scores_BT, mask_BT, config=cfg.algorithm)

    logp_BT = (-torch.rand(B, R) * 3).requires_grad_(True)
    ref_BT = logp_BT.detach() + 0.3 * torch.randn(B, R)
    # the engine's flat (no padding) log-probs: row b's response log-probs sit one token left of the
    # response, as verl's no_padding_2_padding expects
    pieces = []
    for b, n in enumerate(lengths):
        pieces += [torch.zeros(P - 1), logp_BT[b, :n], torch.zeros(1)]
    flat = torch.cat(pieces)
    attention_mask = torch.zeros(B, P + R, dtype=torch.long)
    for b, n in enumerate(lengths):
        attention_mask[b, : P + n] = 1
    data = TensorDict(
        {
            "prompts": torch.ones(B, P, dtype=torch.long),
            "responses": torch.ones(B, R, dtype=torch.long),
            "attention_mask": attention_mask,
            "response_mask": mask_BT.long(),
            "old_log_probs": logp_BT.detach() * mask_BT,
            "advantages": advantages_BT,
            "ref_log_prob": ref_BT * mask_BT,
        },
        batch_size=[B],
    )
    for key, value in (("dp_size", 1), ("batch_num_tokens", None), ("global_batch_size", None)):
        data.set_non_tensor(key, value)
    loss, _ = ppo_loss(actor_cfg, {"log_probs": flat}, data)
    (grad_verl,) = torch.autograd.grad(loss, logp_BT)

    logp2 = logp_BT.detach().clone().requires_grad_(True)
    expected = naive_objective(logp2, ref_BT, mask_BT, chunks, beta)
    (grad_spec,) = torch.autograd.grad(expected, logp2)
    surrogate = naive_objective(logp_BT.detach(), ref_BT, mask_BT, chunks, beta, old_BT=logp_BT.detach())
    assert float(loss) == pytest.approx(float(surrogate), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(grad_verl * mask_BT, grad_spec * mask_BT, rtol=1e-5, atol=1e-6)
    assert grad_spec.abs().sum() > 0
    # a wrong objective is told apart: per-token averaging (token-mean) would scale the gradient
    assert not torch.allclose(grad_verl, grad_spec * B / mask_BT.sum(), atol=1e-4)
