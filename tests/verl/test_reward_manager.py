"""The `omniopd` reward manager in-process (no Ray): task-reward mixing, its refusals, and a rerun of the same
trajectories answered from the teacher cache.

Real Auditor with an `openai_completions` teacher over HTTP on 127.0.0.1, SmolLM2's tokenizer, verl's
gsm8k scorer; the manager is built by verl's own `load_reward_manager`, as a RewardLoopWorker does.
Independent check: with lambda > 0 the scores are the lambda = 0 scores plus lambda * R_task on every
response token, where R_task is verl's `default_compute_score` called directly.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch
import verl  # noqa: F401 - registers the reward manager through the entry point
from omegaconf import OmegaConf

PROMPT = "Janet has 3 apples and buys 4 more. How many apples?"


def build_manager(tiny_model_path, teacher_url, overrides):
    from verl.trainer.ppo.reward import load_reward_manager
    from verl.utils import hf_tokenizer

    from omniopd_verl.cli.train import compose_verl_config, config_location
    from omniopd_verl.verl_integration.reward_manager import OmniOPDRewardManager

    cfg = compose_verl_config(
        *config_location(None, "fsdp"),
        [
            f"actor_rollout_ref.model.path={tiny_model_path}",
            "omniopd.chunks=2",
            "omniopd.samples=2",
            "omniopd.chunk_len=4",
            "omniopd.scheduler=uniform",  # no entropies needed: the manager must cope without them
            "omniopd.similarity=ned",
            "omniopd.teacher.model=local-teacher",
            f"omniopd.teacher.api_base={teacher_url}",
            *overrides,
        ],
    )
    OmegaConf.resolve(cfg)
    OmniOPDRewardManager._class_initialized = False  # a fresh Auditor per config (one per process in verl)
    manager = load_reward_manager(cfg, hf_tokenizer(tiny_model_path))
    assert isinstance(manager, OmniOPDRewardManager)
    return manager


def trajectory(tokenizer, response_text, *, student=True, ground_truth="7", uid="u0", response_ids=None):
    """One verl trajectory (batch of 1) for PROMPT; `response_ids` replaces the tokenized `response_text`."""
    from verl.protocol import DataProto

    prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    prompt_ids = list(prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids)
    if response_ids is None:
        response_ids = tokenizer(response_text, add_special_tokens=False)["input_ids"]
    T = len(response_ids)
    extra = {"omniopd_student": {"logprobs": [-0.5] * T, "entropy": None, "entropy_source": "rollout_topk"}}
    non_tensors = {
        "raw_prompt": np.array([[{"role": "user", "content": PROMPT}]], dtype=object),
        "uid": np.array([uid], dtype=object),
        "data_source": np.array(["openai/gsm8k"], dtype=object),
        "reward_model": np.array([{"ground_truth": ground_truth} if ground_truth else {}], dtype=object),
        "extra_info": np.array([{}], dtype=object),
        "tool_extra_fields": np.array([extra if student else {}], dtype=object),
    }
    prompts = torch.tensor([prompt_ids])
    responses = torch.tensor([response_ids])
    return (
        DataProto.from_dict(
            tensors={
                "prompts": prompts,
                "responses": responses,
                "attention_mask": torch.ones(1, prompts.shape[1] + T, dtype=torch.long),
            },
            non_tensors=non_tensors,
        ),
        response_text,
    )


def test_task_reward_is_mixed_in_with_its_weight(tiny_model_path):
    from verl.utils.reward_score import default_compute_score

    from omniopd_verl.testing import ScriptedGenerator, serve_fault_server

    with serve_fault_server(generator=ScriptedGenerator(words=4)) as teacher:
        m0 = build_manager(tiny_model_path, teacher.url, [])
        data, text = trajectory(m0.tokenizer, "We add 3 and 4 to get 7. The answer is #### 7")
        r0 = asyncio.run(m0.run_single(data))
        m1 = build_manager(tiny_model_path, teacher.url, ["omniopd.task_reward_weight=0.5"])
        r1 = asyncio.run(m1.run_single(data))
    task = default_compute_score("openai/gsm8k", text, "7")
    task = float(task["score"] if isinstance(task, dict) else task)
    assert task == 1.0  # a solved answer, so the mixing is visible
    s0 = torch.tensor(r0["reward_extra_info"]["omniopd_token_scores"])
    s1 = torch.tensor(r1["reward_extra_info"]["omniopd_token_scores"])
    assert (s0 > 0).sum() == 2 * 4  # two uniform chunks of C = 4 tokens
    torch.testing.assert_close(s1, s0 + 0.5 * task, rtol=0, atol=1e-6)
    assert r0["reward_extra_info"]["acc"] == task  # reported at lambda = 0, not mixed in
    assert r1["reward_score"] == pytest.approx(float(s1.sum()))


def test_refusals_name_what_is_missing(tiny_model_path):
    from omniopd_verl.errors import GuardError
    from omniopd_verl.testing import ScriptedGenerator, serve_fault_server

    with serve_fault_server(generator=ScriptedGenerator(words=4)) as teacher:
        manager = build_manager(tiny_model_path, teacher.url, ["omniopd.task_reward_weight=1.0"])
        data, _ = trajectory(manager.tokenizer, "seven apples in total", student=False)
        with pytest.raises(GuardError, match="default_agent_loop=omniopd_agent"):
            asyncio.run(manager.run_single(data))
        data, _ = trajectory(manager.tokenizer, "seven apples in total", ground_truth=None)
        with pytest.raises(GuardError, match="reward_model.ground_truth"):
            asyncio.run(manager.run_single(data))


def test_default_task_score_falls_back_to_our_graders_for_our_dataset_names():
    from verl.utils.reward_score import default_compute_score

    from omniopd_verl.verl_integration.reward_manager import default_task_score

    # a name verl knows goes to verl's scorer unchanged
    text = "so the answer is #### 7"
    assert default_task_score("openai/gsm8k", text, "7") == default_compute_score("openai/gsm8k", text, "7")
    # verl raises for the names `omniopd-verl data prepare` writes; we grade them with math-verify
    with pytest.raises(NotImplementedError):
        default_compute_score("math500", "\\boxed{\\frac{1}{2}}", "0.5")
    assert default_task_score("math500", "the answer is \\boxed{\\frac{1}{2}}", "0.5") == 1.0
    assert default_task_score("gsm8k", "the answer is \\boxed{8}", "7") == 0.0


def test_a_rerun_of_the_same_trajectories_is_answered_from_the_cache(tiny_model_path, tmp_path):
    """Two runs (two managers, each with its own Auditor, as two verl runs' reward workers) score the same
    trajectories under different verl uids (uuid4 per prompt per run): the second run's teacher requests
    are keyed on the trajectory's content, so it makes no HTTP call, gets the same scores and counts every
    anchor as a cache hit. A response one token away is asked anew."""
    from uuid import uuid4

    from verl.utils import hf_tokenizer

    from omniopd_verl.testing import ScriptedGenerator, serve_fault_server

    overrides = [f"omniopd.teacher.cache_path={tmp_path / 'teacher-cache.sqlite'}"]  # the runs' shared cache file
    texts = ["We add 3 and 4 to get 7. The answer is #### 7", "Three plus four makes seven apples in total."]

    def run(teacher, responses):
        """One run: a fresh manager, fresh verl uids; (results, HTTP requests, teacher metrics) of its scoring."""
        manager = build_manager(tiny_model_path, teacher.url, overrides)
        uids = [uuid4().hex for _ in responses]
        trajectories = [
            trajectory(manager.tokenizer, t, uid=u, response_ids=ids)[0]
            for u, (t, ids) in zip(uids, responses, strict=True)
        ]

        async def score():
            manager.auditor.reset_metrics()
            out = [await manager.run_single(d) for d in trajectories]
            metrics = manager.auditor.metrics()
            await manager.auditor.aclose()
            return out, metrics

        before = teacher.calls()  # after the manager's start-up (GET /models: who answers is in the cache key)
        results, metrics = asyncio.run(score())
        for u, r in zip(uids, results, strict=True):  # the audit still names verl's uid (records, errors)
            assert json.loads(r["reward_extra_info"]["omniopd_audit"])["id"] == f"{u}:0"
        return results, teacher.calls() - before, metrics

    with serve_fault_server(generator=ScriptedGenerator(words=4)) as teacher:
        first, first_calls, first_metrics = run(teacher, [(t, None) for t in texts])
        second, second_calls, second_metrics = run(teacher, [(t, None) for t in texts])
        tok = hf_tokenizer(tiny_model_path)
        original = tok(texts[0], add_special_tokens=False)["input_ids"]
        changed = list(original)
        changed[len(changed) // 2] = tok(" eight", add_special_tokens=False)["input_ids"][0]
        assert changed != original and len(changed) == len(original)
        third, third_calls, _ = run(teacher, [(texts[0], changed)])

    anchors = 2 * len(texts)  # omniopd.chunks=2 per response; one HTTP call per anchor (the server takes n)
    assert first_calls == anchors and first_metrics["teacher/calls"] == anchors
    assert first_metrics["teacher/cache_hits"] == 0
    # the rerun: no HTTP call at all, every anchor a cache hit, in the run's metrics and in each row's
    assert second_calls == 0 and second_metrics["teacher/calls"] == 0
    assert second_metrics["teacher/cache_hits"] == anchors
    for a, b in zip(first, second, strict=True):
        assert b["reward_extra_info"]["omniopd_row/teacher/cache_hits"] == 2
        assert b["reward_extra_info"]["omniopd_row/teacher/requests"] == 2
        assert b["reward_extra_info"]["omniopd_token_scores"] == a["reward_extra_info"]["omniopd_token_scores"]
        assert b["reward_score"] == a["reward_score"]
        assert sum(x > 0 for x in b["reward_extra_info"]["omniopd_token_scores"]) == 2 * 4  # audited: scores
    # one token changed in the response: another trajectory, asked anew
    assert third_calls > 0
    assert third[0]["reward_extra_info"]["omniopd_row/teacher/cache_hits"] < 2
