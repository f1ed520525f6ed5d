"""The control arm's shuffling and the held-out paired metric, against hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from omniopd_verl.advantage import advantage_from_audits
from omniopd_verl.audit.types import ChunkAudit, ResponseAudit
from omniopd_verl.local import paired_eval as pe
from omniopd_verl.local.control import shuffle_pi_hat


def audits():
    def chunk(start, w, prior):
        return ChunkAudit(start, start + 2, 1.0, f"s{start}", ["t"], [0.5], 1.0, prior, w)

    return [
        ResponseAudit("a", 8, [chunk(0, 0.1, 0.01), chunk(4, 0.2, 0.02)]),
        ResponseAudit("b", 8, [chunk(2, 0.3, 0.03)]),
        ResponseAudit("c", 8, [chunk(1, 0.4, 0.04), chunk(5, 0.5, 0.05)]),
    ]


def pairs(aa):
    return [(c.pi_hat, c.pi_bar) for a in aa for c in a.chunks]


def test_shuffle_permutes_the_batchs_pi_hat_pairs_and_nothing_else():
    original = audits()
    shuffled = shuffle_pi_hat(original, seed=3)
    assert sorted(pairs(shuffled)) == sorted(pairs(original))  # the same judgements...
    assert pairs(shuffled) != pairs(original)  # ...on other chunks
    assert all(math.isclose(w * 0.1, p) for w, p in pairs(shuffled))  # pi_bar travels with its pi_hat
    for a, b in zip(original, shuffled, strict=True):  # positions, texts, lengths untouched
        assert [(c.start, c.end, c.student_text, c.teacher_texts) for c in a.chunks] == [
            (c.start, c.end, c.student_text, c.teacher_texts) for c in b.chunks
        ]
    assert pairs(shuffle_pi_hat(original, seed=3)) == pairs(shuffled)  # seeded
    assert pairs(audits()) == pairs(original)  # the input is not mutated
    assert len({tuple(pairs(shuffle_pi_hat(original, seed=s))) for s in range(20)}) > 5


def test_control_advantages_are_a_permutation_of_the_arms():
    mask = torch.ones(3, 8, dtype=torch.long)
    for mode in ("posterior", "centered_batch", "centered_prior"):
        arm_adv, arm = advantage_from_audits(audits(), mask, mode)
        ctrl_adv, ctrl = advantage_from_audits(shuffle_pi_hat(audits(), seed=1), mask, mode)
        assert torch.equal(arm.audit_mask_BT, ctrl.audit_mask_BT)
        a = sorted(arm_adv[arm.audit_mask_BT.bool()].tolist())
        c = sorted(ctrl_adv[ctrl.audit_mask_BT.bool()].tolist())
        assert a == pytest.approx(c, abs=1e-6) and not torch.equal(arm_adv, ctrl_adv)


def test_mean_ci_hand_worked():
    r = pe.mean_ci([1.0, 2.0, 3.0], seed=0)
    assert r["effect"] == 2.0 and r["prompts"] == 3
    assert r["t_ci95"] == pytest.approx([2 - 4.303 / math.sqrt(3), 2 + 4.303 / math.sqrt(3)])
    assert 1.0 <= r["ci95"][0] <= 2.0 <= r["ci95"][1] <= 3.0


def test_paired_change_is_zero_without_a_change_and_sign_follows_the_texts(tmp_path):
    from omniopd_verl.runtime.models import load_causal_lm, make_tiny_random_model
    from omniopd_verl.runtime.scoring import score_token_ids

    model, tok = load_causal_lm(make_tiny_random_model(tmp_path / "tiny"))
    items = [
        pe.HeldoutItem("p0", [5, 6, 7], [[8, 9], [10]], [[11, 12, 13]]),
        pe.HeldoutItem("p0", [5, 6], [[14]], [[15, 16]]),
        pe.HeldoutItem("p1", [20, 21, 22, 23], [[24, 25]], [[26], [27, 28]]),
    ]
    g = pe.measure(model, items, pad_token_id=tok.pad_token_id, max_rows=3)["gap"]
    # independent: full teacher-forced scoring of every (prefix, text)
    for it, gap in zip(items, g, strict=True):
        t = [
            float(lp.mean()) for lp, _ in score_token_ids(model, [it.prefix_ids] * len(it.teacher_ids), it.teacher_ids)
        ]
        b = [float(lp.mean()) for lp, _ in score_token_ids(model, [it.prefix_ids] * len(it.base_ids), it.base_ids)]
        assert gap == pytest.approx(sum(t) / len(t) - sum(b) / len(b), abs=1e-5)
    same = pe.paired_change(items, g, g, metric=pe.GAP_METRIC)
    assert same["effect"] == 0.0 and same["ci95"] == [0.0, 0.0] and same["prefixes"] == 3 and same["prompts"] == 2
    assert same["metric"] == pe.GAP_METRIC and same["before"] == pytest.approx(((g[0] + g[1]) / 2 + g[2]) / 2)
    shifted = pe.paired_change(items, g, [x + 0.5 for x in g])
    assert shifted["effect"] == pytest.approx(0.5)
    # per prompt first: p0's two prefixes average before the mean over prompts
    moved = pe.paired_change(items, g, [g[0] + 1.0, g[1], g[2]])
    assert moved["effect"] == pytest.approx(0.25)
    diff = pe.arm_minus_control(items, [x + 0.2 for x in g], g)
    assert diff["effect"] == pytest.approx(0.2)


def test_saved_items_round_trip(tmp_path):
    items = [pe.HeldoutItem("p", [1, 2], [[3]], [[4, 5]])]
    pe.save_items(items, tmp_path / "set.jsonl")
    assert pe.load_items(tmp_path / "set.jsonl") == items


def test_token_set_mass_against_a_naive_softmax_over_the_base_samples_positions(tmp_path):
    """mass(x) = mean over every base-sample position of sum_{v in S} softmax(logits)_v, by a plain forward."""
    from omniopd_verl.runtime.models import load_causal_lm, make_tiny_random_model

    model, tok = load_causal_lm(make_tiny_random_model(tmp_path / "tiny"))
    model.eval()
    items = [
        pe.HeldoutItem("p0", [5, 6, 7], [[8, 9], [10]], [[11, 12, 13]]),
        pe.HeldoutItem("p1", [20, 21, 22, 23], [[24, 25]], [[26], [27, 28]]),
    ]
    S = [3, 11, 27, 40, 41]

    def naive_mass(m, it, bias_V=None):
        probs = []
        for text in it.base_ids:  # teacher texts never count: the contexts are the student's own
            with torch.no_grad():
                logits = m(input_ids=torch.tensor([it.prefix_ids + text])).logits[0]
            if bias_V is not None:
                logits = logits + bias_V
            p = torch.softmax(logits.double(), -1)[len(it.prefix_ids) - 1 : len(it.prefix_ids) + len(text) - 1]
            probs += p[:, S].sum(-1).tolist()
        return sum(probs) / len(probs)

    got = pe.measure(model, items, pad_token_id=tok.pad_token_id, set_ids=S, max_rows=3)
    assert set(got) == {"gap", "mass"}
    assert got["mass"] == pytest.approx([naive_mass(model, it) for it in items], abs=1e-5)
    # the steered teacher's own mass (its target) is the same computation under its logit bias, and larger
    bias_V = torch.zeros(model.get_output_embeddings().weight.shape[0])
    bias_V[S] = 2.0
    teacher = pe.measure(model, items, pad_token_id=tok.pad_token_id, set_ids=S, logit_bias_V=bias_V, gap=False)
    assert set(teacher) == {"mass"}
    assert teacher["mass"] == pytest.approx([naive_mass(model, it, bias_V) for it in items], abs=1e-5)
    assert all(t > s for t, s in zip(teacher["mass"], got["mass"], strict=True))
    with pytest.raises(ValueError, match="needs set_ids"):
        pe.measure(model, items, pad_token_id=tok.pad_token_id, gap=False)
    changes = pe.paired_changes(items, got, {"gap": got["gap"], "mass": [m + 0.01 for m in got["mass"]]})
    assert changes["mass"]["metric"] == pe.METRIC and changes["mass"]["effect"] == pytest.approx(0.01)
    assert changes["gap"]["metric"] == pe.GAP_METRIC and changes["gap"]["effect"] == 0.0
