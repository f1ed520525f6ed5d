"""The `omniopd` estimator through verl's own compute_advantage paths, against naive references.

Batches are hand-built DataProto objects with right padding (verl's layout); rm_scores come from the
per-row step the reward manager uses (`advantage.token_scores`). The references are plain loops over
rows and tokens. 'centered_batch' needs the audited-token mask, which verl's compute_advantage cannot
forward: it is passed to the estimator explicitly (as the OmniOPD trainer modes do), never guessed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import verl  # noqa: F401 - registers omniopd through the verl.plugins entry point
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from omniopd_verl.advantage import advantage_from_audits, batch_advantage, token_scores
from omniopd_verl.audit.types import ChunkAudit, ResponseAudit


def chunk(start, end, weight, prior=0.5):
    return ChunkAudit(start, end, None, "s", ["t"], [0.5], 0.5, prior, weight)


LENGTHS = [12, 9, 5]
AUDITS = [
    ResponseAudit("a", 12, [chunk(0, 3, 0.8, 0.6), chunk(6, 9, 0.25, 0.1)]),
    ResponseAudit("b", 9, [chunk(5, 8, 0.5, 0.7)]),
    ResponseAudit("c", 5, []),  # shorter than C: no audit, KL only
]


def mask_for(lengths, width):
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return mask


def naive_advantage(audits, lengths, width, mode="posterior", task=None, lam=0.0):
    weights = [c.pi_hat for a in audits for c in a.chunks]
    batch_mean = sum(weights) / len(weights) if weights else 0.0
    out = [[0.0] * width for _ in audits]
    for b, a in enumerate(audits):
        for t in range(lengths[b]):
            value = lam * task[b] if task is not None else 0.0
            for c in a.chunks:
                if c.start <= t < c.end:
                    value += {
                        "posterior": c.pi_hat,
                        "centered_prior": c.pi_hat - c.pi_bar,
                        "centered_batch": c.pi_hat - batch_mean,
                    }[mode]
            out[b][t] = value
    return torch.tensor(out)


def algorithm_config(mode="posterior", lam=0.0):
    return OmegaConf.create(
        {
            "adv_estimator": "omniopd",
            "gamma": 1.0,
            "lam": 1.0,
            "omniopd": {"advantage": mode, "task_reward_weight": lam},
        }
    )


def batch(scores_BT, mask_BT, garbage_on_padding=True):
    from verl.protocol import DataProto

    scores = scores_BT.clone()
    if garbage_on_padding:  # the estimator, not the producer, must guarantee 0 on padding
        scores[mask_BT == 0] = 7.0
    B = scores.shape[0]
    return DataProto.from_dict(
        tensors={"token_level_scores": scores, "token_level_rewards": scores, "response_mask": mask_BT},
        non_tensors={"uid": np.array([f"u{b}" for b in range(B)], dtype=object)},
    )


def reward_side_scores(audits, mask_BT, mode, task=None, lam=0.0):
    """What the reward manager writes as rm_scores (and the audited-token mask), one response at a time."""
    scores, audited = torch.zeros(mask_BT.shape), torch.zeros(mask_BT.shape, dtype=torch.bool)
    for b, a in enumerate(audits):
        n = int(mask_BT[b].sum())
        t = None if task is None else torch.tensor([task[b]])
        row = token_scores([a], torch.ones(1, n, dtype=torch.long), mode, t, lam)
        scores[b, :n], audited[b, :n] = row.scores_BT[0], row.audit_mask_BT[0]
    return scores, audited


def estimate(data, cfg, mode, audited, path="compute_advantage"):
    """verl's compute_advantage paths; 'centered_batch' calls the estimator with the explicit mask."""
    from verl.trainer.ppo.ray_trainer import compute_advantage
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    from omniopd_verl.verl_integration.estimator import omniopd_adv_estimator

    if mode == "centered_batch":
        advantages, returns = omniopd_adv_estimator(
            data.batch["token_level_rewards"], data.batch["response_mask"], config=cfg, audit_mask=audited
        )
        return advantages, returns
    if path == "compute_advantage":
        out = compute_advantage(data, adv_estimator="omniopd", config=cfg)
    else:
        keys = [f"u{b}_0_0" for b in range(len(data))]
        out = compute_advantage_for_multi_trajectories(data, batch_keys=keys, adv_estimator="omniopd", config=cfg)
    return out.batch["advantages"], out.batch["returns"]


@pytest.mark.parametrize("path", ["compute_advantage", "multi_trajectories"])
@pytest.mark.parametrize("mode", ["posterior", "centered_prior", "centered_batch"])
def test_estimator_through_verl_matches_naive(path, mode):
    width = 14
    mask = mask_for(LENGTHS, width)
    scores, audited = reward_side_scores(AUDITS, mask, mode)
    advantages, returns = estimate(batch(scores, mask), algorithm_config(mode), mode, audited, path)
    expected = naive_advantage(AUDITS, LENGTHS, width, mode)
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(returns, expected, rtol=0, atol=1e-6)
    if mode == "posterior":  # exactly pi_hat on chunk tokens, exactly 0 elsewhere
        assert advantages[0, 0].item() == pytest.approx(0.8)
        assert torch.all(advantages[2] == 0)
        assert torch.all(advantages[mask == 0] == 0)
    # the local engine's one function gives the same advantage on the same batch
    local, _ = advantage_from_audits(AUDITS, mask, mode)
    torch.testing.assert_close(local, expected, rtol=0, atol=1e-6)


def test_centered_batch_uses_the_audited_mask_not_the_sign():
    """A chunk whose pi_hat is tiny is still audited, and a negative score (a task reward, a KL penalty)
    is not: the mean is over the mask, whatever the signs."""
    from verl.trainer.ppo.ray_trainer import compute_advantage

    from omniopd_verl.errors import ConfigError
    from omniopd_verl.verl_integration.estimator import omniopd_adv_estimator

    mask = mask_for([4, 4], 4)
    scores = torch.tensor([[0.9, 0.9, -0.3, -0.3], [0.1, 0.1, 0.0, 0.0]])
    audited = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    adv, _ = omniopd_adv_estimator(scores, mask, config=algorithm_config("centered_batch"), audit_mask=audited)
    expected = torch.tensor([[0.4, 0.4, -0.3, -0.3], [-0.4, -0.4, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="needs the batch's audited-token mask"):
        compute_advantage(batch(scores, mask), adv_estimator="omniopd", config=algorithm_config("centered_batch"))


def test_task_reward_mixed_in_with_its_weight():
    from verl.trainer.ppo.ray_trainer import compute_advantage

    width, task, lam = 12, [1.0, 0.0, 1.0], 0.5
    mask = mask_for(LENGTHS, width)
    data = batch(reward_side_scores(AUDITS, mask, "posterior", task, lam)[0], mask)
    out = compute_advantage(data, adv_estimator="omniopd", config=algorithm_config("posterior", lam))
    torch.testing.assert_close(
        out.batch["advantages"], naive_advantage(AUDITS, LENGTHS, width, "posterior", task, lam), rtol=0, atol=1e-6
    )


def test_centered_batch_refuses_a_task_reward():
    from omniopd_verl.errors import ConfigError

    mask = mask_for(LENGTHS, 12)
    with pytest.raises(ConfigError, match="task_reward_weight"):
        token_scores(AUDITS, mask, "centered_batch", torch.ones(3), 0.5)


def test_estimator_reads_the_interpolated_omniopd_node_of_the_shipped_config():
    from verl.trainer.ppo.ray_trainer import compute_advantage

    from omniopd_verl.cli.train import compose_verl_config, config_location

    cfg = compose_verl_config(*config_location(None, "fsdp"), ["omniopd.advantage=centered_prior"])
    assert cfg.algorithm.adv_estimator == "omniopd"
    width = 12
    mask = mask_for(LENGTHS, width)
    data = batch(reward_side_scores(AUDITS, mask, "centered_prior")[0], mask)
    out = compute_advantage(data, adv_estimator=cfg.algorithm.adv_estimator, config=cfg.algorithm)
    torch.testing.assert_close(
        out.batch["advantages"], naive_advantage(AUDITS, LENGTHS, width, "centered_prior"), rtol=0, atol=1e-6
    )


@st.composite
def audited_batches(draw):
    B = draw(st.integers(1, 4))
    C = draw(st.integers(1, 4))
    lengths = [draw(st.integers(0, 16)) for _ in range(B)]
    audits = []
    for b, n in enumerate(lengths):
        starts = sorted(draw(st.sets(st.integers(0, max(n - 1, 0)), max_size=4))) if n >= C else []
        chunks, last_end = [], -1
        for s in starts:
            if s >= last_end and s + C <= n:
                w = draw(st.floats(0.001, 0.999))
                chunks.append(chunk(s, s + C, w, draw(st.floats(0.001, 0.999))))
                last_end = s + C
        audits.append(ResponseAudit(f"r{b}", n, chunks))
    return audits, lengths, draw(st.integers(0, 3))


@settings(max_examples=40, deadline=None)
@given(audited_batches(), st.sampled_from(["posterior", "centered_prior", "centered_batch"]))
def test_estimator_property_matches_naive(sample, mode):
    audits, lengths, extra_pad = sample
    width = max(lengths + [1]) + extra_pad
    mask = mask_for(lengths, width)
    scores, audited = reward_side_scores(audits, mask, mode)
    advantages, _ = estimate(batch(scores, mask), algorithm_config(mode), mode, audited)
    expected = naive_advantage(audits, lengths, width, mode)
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(advantage_from_audits(audits, mask, mode)[0], expected, rtol=0, atol=1e-6)


def test_pure_function_guards():
    from omniopd_verl.errors import GuardError

    with pytest.raises(GuardError, match="same"):
        batch_advantage(torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(GuardError, match="NaN"):
        batch_advantage(torch.tensor([[float("nan")]]), torch.ones(1, 1))
    with pytest.raises(GuardError, match="audited-token mask"):
        batch_advantage(torch.zeros(1, 2), torch.ones(1, 2), "centered_batch")
