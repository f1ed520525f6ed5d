"""White-box token-level OPD (local/token_opd.py, local/methods.py): the teacher's log-probs (from the
`transformers` teacher the registry builds) and the loss against naive references."""

from __future__ import annotations

import copy

import pytest
import torch

from omniopd_verl.local.loss import collate, make_actor_config
from omniopd_verl.local.token_opd import token_opd_credit
from omniopd_verl.local.update import policy_update
from omniopd_verl.runtime.models import load_causal_lm, make_tiny_random_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("topd")
    student, tok = load_causal_lm(make_tiny_random_model(root / "s", seed=0))
    teacher, _ = load_causal_lm(make_tiny_random_model(root / "t", seed=1))
    return student, teacher, tok


def white_box(teacher, tok, steer=None):
    """The `transformers` teacher on `teacher`'s weights, built through the registry as the local engine does."""
    from omniopd_verl import registry
    from omniopd_verl.config import TeacherConfig

    options = {"model": "reference", **({"steer": steer} if steer else {})}
    cfg = TeacherConfig(name="transformers", model="tiny-teacher", options=options)
    return registry.create_teacher(cfg, resources={"reference_model": (teacher, tok)}).plugin


def naive_logprobs(model, prompt, response, bias=None):
    """One full forward of prompt + response; log_softmax(logits + bias) at each response token."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + response])).logits[0].float()
    if bias is not None:
        logits = logits + bias
    logp = torch.log_softmax(logits, dim=-1)
    return torch.stack([logp[len(prompt) - 1 + j, tok] for j, tok in enumerate(response)])


PROMPTS = [[5, 6, 7, 8], [9, 10]]
RESPONSES = [[11, 12, 13], [14, 15, 16, 17, 18]]


def test_teacher_logprobs_equal_a_full_forward_with_and_without_steering(models):
    _, teacher, tok = models
    steer = {"tokens": "arithmetic", "bias": 3.0}
    for plugin in (white_box(teacher, tok), white_box(teacher, tok, steer)):
        bias = plugin.steering.bias_V if plugin.steering else None
        # responses with tokens of the steered set, so a bias left out would show
        responses = [RESPONSES[0] + (plugin.steering.token_ids[:3] if plugin.steering else []), RESPONSES[1]]
        got = plugin.token_logprobs(PROMPTS, responses)
        for p, r, g in zip(PROMPTS, responses, got, strict=True):
            assert torch.allclose(g, naive_logprobs(teacher, p, r, bias), atol=1e-5)


def test_token_opd_loss_equals_the_naive_reverse_kl_policy_gradient(models):
    student, teacher, tok = models
    student = copy.deepcopy(student)
    t_lp = white_box(teacher, tok).token_logprobs(PROMPTS, RESPONSES)
    s_lp = [naive_logprobs(student, p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    batch = collate(PROMPTS, RESPONSES, tok.pad_token_id)
    credit = token_opd_credit(t_lp, s_lp, batch.response_mask_BT)
    # naive: A_t = log pi_T - log pi_theta on every response token, no KL-anchor token
    for b, (t, s) in enumerate(zip(t_lp, s_lp, strict=True)):
        assert torch.allclose(credit.advantage_BT[b, : len(t)], t - s)
        assert float(credit.advantage_BT[b, len(t) :].abs().sum()) == 0.0
    assert not credit.unaudited_mask_BT.any() and credit.audit_mask_BT.sum() == sum(map(len, RESPONSES))
    # at ratio 1 (one update on fresh samples), seq-mean-token-sum: objective = -(1/B) sum_b sum_t A_bt,
    # and the reported L_chunk = -(1/B) sum_b sum_t A_bt log pi_theta(y_t)
    cfg = make_actor_config(
        policy_loss="vanilla", clip_ratio=0.2, loss_agg_mode="seq-mean-token-sum", micro_batch_size=1
    )
    opt = torch.optim.SGD(student.parameters(), lr=0.0)
    m = policy_update(
        student, student, opt, cfg, PROMPTS, RESPONSES, credit, beta=0.1, micro_batch_size=1, grad_clip=0.0,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    B = len(RESPONSES)
    objective = -sum(float((t - s).sum()) for t, s in zip(t_lp, s_lp, strict=True)) / B
    l_chunk = -sum(float(((t - s) * s).sum()) for t, s in zip(t_lp, s_lp, strict=True)) / B
    assert m["loss/objective"] == pytest.approx(objective, rel=1e-4, abs=1e-5)
    assert m["loss/l_chunk"] == pytest.approx(l_chunk, rel=1e-4, abs=1e-5)
    assert m["loss/l_kl"] == 0.0


def test_token_opd_needs_a_white_box_teacher(models):
    from omniopd_verl.config import TeacherConfig
    from omniopd_verl.errors import ConfigError

    student, _, tok = models
    from omniopd_verl import registry
    from omniopd_verl.local.methods import build_method

    black_box = registry.create_teacher(TeacherConfig(name="openai_completions", model="m", api_base="http://x/v1"))
    with pytest.raises(ConfigError, match=r"omniopd.teacher.name='openai_completions' is invalid with local.method"):
        build_method("token_opd", black_box, "openai_completions")
    assert build_method("token_opd", white_box(student, tok), "transformers").name == "token_opd"
    from omniopd_verl.local.config import METHODS

    assert [build_method(m, white_box(student, tok), "transformers").name for m in METHODS] == list(METHODS)
