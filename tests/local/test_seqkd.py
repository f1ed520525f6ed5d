"""SeqKD (local/seqkd.py): SFT on the teacher's complete answers, pinned against a naive NLL and run for real.

The pinning test feeds sft_credit through the engine's loss (verl's policy loss, ratio 1) and compares
value and gradient with a float64 naive mean over sequences of the summed token NLL. The end-to-end test
trains one step on the tiny model with a real `transformers` teacher through the teacher library and
checks what the step asked of the teacher and what it trained on.
"""

from __future__ import annotations

import pytest
import torch

from omniopd_verl.local.loss import make_actor_config, omniopd_loss
from omniopd_verl.local.seqkd import answers_to_token_ids, sft_credit
from omniopd_verl.protocols import TeacherResult


def test_sft_credit_through_the_policy_loss_is_the_mean_sequence_nll():
    g = torch.Generator().manual_seed(5)
    B, T, V = 3, 5, 11
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
    credit = sft_credit(mask)
    assert credit.unaudited_mask_BT.sum() == 0 and torch.equal(credit.audit_mask_BT, mask.bool())
    cfg = make_actor_config(
        policy_loss="vanilla", clip_ratio=0.2, loss_agg_mode="seq-mean-token-sum", micro_batch_size=3
    )
    x = logits.float().clone().requires_grad_(True)
    terms = omniopd_loss(
        x, logits.float(), ids, credit.advantage_BT, mask, credit.unaudited_mask_BT,
        beta=0.1, actor_config=cfg, global_batch_size=B, batch_num_tokens=int(mask.sum()),
    )  # fmt: skip
    terms.objective.backward()
    y = logits.clone().requires_grad_(True)
    nll = [-sum(torch.log_softmax(y[b, t], -1)[ids[b, t]] for t in range(T) if mask[b, t]) for b in range(B)]
    naive = sum(nll) / B
    naive.backward()
    assert float(terms.l_chunk) == pytest.approx(float(naive), rel=1e-5)  # L_chunk with pi_hat = 1: the NLL
    assert float(terms.l_kl) == 0.0
    torch.testing.assert_close(x.grad.double(), y.grad, rtol=1e-4, atol=1e-6)


def test_a_failed_teacher_request_stops_the_step_instead_of_training_on_fewer_answers(tiny_model_path):
    from omniopd_verl.errors import GuardError
    from omniopd_verl.runtime.models import load_tokenizer

    tok = load_tokenizer(tiny_model_path)
    ok = TeacherResult("a:0", [" 12 + 3 = 15", ""])
    assert answers_to_token_ids([ok], tok, 3) == [[tok(" 12 + 3 = 15", add_special_tokens=False)["input_ids"][:3], []]]
    with pytest.raises(GuardError, match="the teacher failed request 'b:0' after retries: HTTP 500"):
        answers_to_token_ids([ok, TeacherResult("b:0", None, error="HTTP 500")], tok, 3)


def test_one_seqkd_step_asks_the_teacher_per_prompt_and_fine_tunes_on_its_answers(tmp_path, tiny_model_path):
    from omniopd_verl.local.config import load_run_config
    from omniopd_verl.local.train import LocalTrainer

    run = load_run_config(
        None,
        [
            f"local.model={tiny_model_path}",
            f"omniopd.teacher.model={tiny_model_path}",
            "omniopd.teacher.name=transformers",
            "omniopd.similarity=ned",
            "local.method=seqkd",
            "local.steps=1",
            "local.prompts_per_step=2",
            "local.responses_per_prompt=3",
            "local.max_new_tokens=7",
            "local.micro_batch_size=4",
            "local.lr=1e-2",
            "local.progress=false",
            "local.tensorboard=false",
            f"local.output_dir={tmp_path / 'run'}",
        ],
    )
    trainer = LocalTrainer(run)
    try:
        before = [p.detach().clone() for p in trainer.model.parameters()]
        metrics = trainer.train_step()
        after = list(trainer.model.parameters())
    finally:
        trainer.close()
    assert metrics["teacher/calls"] == 2  # one request per prompt, its 3 answers from one call
    assert metrics["seqkd/answers"] + metrics["seqkd/empty_answers"] == 6
    assert 0 < metrics["seqkd/answer_len_mean"] <= 7
    assert metrics["teacher/completion_tokens"] > 0 and "audit/chunks" not in metrics
    assert metrics["loss/l_kl"] == 0.0 and metrics["loss/l_chunk"] > 0  # an NLL, no KL anchor
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
