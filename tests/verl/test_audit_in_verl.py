"""The audit path inside verl's real classes, on CPU: agent loop -> streaming reward loop -> rm_scores.

Real: verl's `AgentLoopWorker` (its `_compute_score` streaming call) and `RewardLoopWorker` (a Ray actor
in a fresh worker process, where `import verl` alone must register the `omniopd` reward manager),
our `omniopd_agent` loop built by hydra from the shipped agent_loops.yaml, the real Auditor with the
`openai_completions` teacher against an HTTP server on 127.0.0.1, SmolLM2's tokenizer, verl's
`compute_advantage`. Stand-in: the student rollout server (vLLM needs a GPU), see conftest.py.
The TransferQueue put of AgentLoopWorkerTQ is replaced by calling `as_dict()` as it does.

Checked against independent computation: the anchors are the naive peak-entropy choice over the
top-k entropies recomputed from the student model itself; the dense scores are non-zero exactly on
those chunks, constant per chunk, consistent with pi_hat = (k_sem + alpha * pi_bar) / (N + alpha) for
some k_sem in [0, N] with pi_bar recomputed from the student's log-probs; the advantage verl computes
from them equals the scores on response tokens and 0 on padding.
"""

from __future__ import annotations

import asyncio
import json
import math
import os

import numpy as np
import pytest
import torch

M, N, C, ALPHA, K = 3, 2, 6, 1.0, 20
RESPONSE_LENGTH = 40


def naive_peak_entropy(entropy: list[float], T: int, M: int, C: int) -> list[int]:
    order = sorted((t for t in range(T) if t + C <= T), key=lambda t: (-entropy[t], -t))
    chosen: list[int] = []
    for t in order:
        if all(abs(t - s) >= C for s in chosen):
            chosen.append(t)
        if len(chosen) == M:
            break
    return sorted(chosen)


def naive_topk_entropy(logprobs_k: list[float]) -> float:
    """Lower bound (the estimate): H over the top-k plus the tail mass at -log p_k."""
    p = [math.exp(x) for x in logprobs_k]
    h = -sum(pi * x for pi, x in zip(p, logprobs_k, strict=True))
    tail = max(0.0, 1.0 - sum(p))
    return h + tail * (-math.log(min(p)))


@pytest.fixture(scope="module")
def ray_session():
    import ray

    env = {
        k: os.environ[k]
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")
        if k in os.environ
    }
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=True)
    try:
        yield ray
    finally:
        ray.shutdown()


def compose(overrides: list[str]):
    from omegaconf import OmegaConf

    from omniopd_verl.cli.train import compose_verl_config, config_location

    cfg = compose_verl_config(*config_location(None, "fsdp"), overrides)
    OmegaConf.resolve(cfg)
    return cfg


def test_fresh_ray_worker_resolves_omniopd_after_import_verl(ray_session):
    ray = ray_session

    @ray.remote(num_cpus=0)
    def lookup():
        import sys

        import verl  # noqa: F401 - nothing else: the entry point must do the registration
        from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
        from verl.trainer.ppo.core_algos import get_adv_estimator_fn

        fn = get_adv_estimator_fn("omniopd")
        cls = get_reward_manager_cls("omniopd")
        return f"{fn.__module__}.{fn.__name__}", f"{cls.__module__}.{cls.__name__}", sys.argv[0]

    est, manager, _ = ray.get(lookup.remote())
    assert est == "omniopd_verl.verl_integration.estimator.omniopd_adv_estimator"
    assert manager == "omniopd_verl.verl_integration.reward_manager.OmniOPDRewardManager"


def test_dense_scores_land_on_exactly_the_audited_tokens(
    ray_session, tiny_model_path, stand_in_student_server, tmp_path
):
    import hydra
    from verl.experimental.agent_loop.agent_loop import (
        AgentLoopWorker,
        DictConfigWrap,
        ToolListWrap,
        _agent_loop_registry,
    )
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.protocol import DataProto
    from verl.trainer.ppo.ray_trainer import compute_advantage

    from omniopd_verl.testing import ScriptedGenerator, serve_fault_server

    ray = ray_session
    with serve_fault_server(generator=ScriptedGenerator(words=6)) as teacher:
        cfg = compose(
            [
                f"actor_rollout_ref.model.path={tiny_model_path}",
                "actor_rollout_ref.rollout.prompt_length=96",
                f"actor_rollout_ref.rollout.response_length={RESPONSE_LENGTH}",
                "reward.num_workers=1",
                f"omniopd.chunks={M}",
                f"omniopd.samples={N}",
                f"omniopd.chunk_len={C}",
                f"omniopd.alpha={ALPHA}",
                f"omniopd.rollout_topk={K}",
                "omniopd.similarity=ned",
                "omniopd.teacher.name=openai_completions",
                "omniopd.teacher.model=local-teacher",
                f"omniopd.teacher.api_base={teacher.url}",
                "omniopd.teacher.max_retries=1",
                # the run's teacher ledger keeps its spend file here, not in ./checkpoints (shared by every run)
                f"trainer.default_local_dir={tmp_path / 'ckpt'}",
            ]
        )
        reward_worker = ray.remote(RewardLoopWorker).options(num_cpus=0).remote(cfg, None)
        server = stand_in_student_server(tiny_model_path, response_length=RESPONSE_LENGTH)
        worker = AgentLoopWorker(cfg, llm_client=server, reward_loop_worker_handles=[reward_worker])
        assert "omniopd_agent" in _agent_loop_registry  # registered from the shipped agent_loops.yaml

        prompts = [
            [{"role": "user", "content": "What is 12 times 7? Think step by step."}],
            [{"role": "user", "content": "Name three prime numbers larger than 10."}],
        ]

        async def one(i: int):
            kwargs = {
                "raw_prompt": prompts[i],
                "uid": f"prompt-{i}",
                "session_id": 0,
                "data_source": "openai/gsm8k",
                "reward_model": {"ground_truth": "84"},
                "extra_info": {},
                "index": i,
            }
            loop = hydra.utils.instantiate(
                config=_agent_loop_registry["omniopd_agent"],
                trainer_config=DictConfigWrap(cfg),
                server_manager=server,
                tokenizer=worker.tokenizer,
                processor=worker.processor,
                hf_model_type=worker.hf_model_type,
                dataset_cls=worker.dataset_cls,
                data_config=DictConfigWrap(cfg.data),
                tools=ToolListWrap(worker.tools),
            )
            output = await loop.run({"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}, **kwargs)
            # what AgentLoopWorkerTQ._agent_loop_postprocess does: streaming score, then as_dict() -> TQ
            await worker._compute_score([output], kwargs=kwargs)
            return output, output.as_dict()

        async def both():
            return await asyncio.gather(one(0), one(1))

        results = asyncio.run(both())
        teacher_calls = teacher.calls("/v1/completions")

    rows_scores, rows_masks, total_anchors = [], [], 0
    rescoring = [c for c in server.calls if c["sampling_params"].get("prompt_logprobs") == K]
    assert len(rescoring) == 2  # one top-k re-score per trajectory, through the rollout server
    for output, fields in results:
        P, T = len(output.prompt_ids), len(output.response_ids)
        assert T >= C, "the stand-in student must write at least one chunk"
        # independent anchors: top-k entropies recomputed from the student model, naive greedy choice
        lp_LV = server.logprobs_LV(list(output.prompt_ids) + list(output.response_ids))
        entropy = [naive_topk_entropy(lp_LV[P - 1 + t].topk(K).values.double().tolist()) for t in range(T)]
        anchors = naive_peak_entropy(entropy, T, M, C)
        assert anchors, "T >= C always yields an anchor"
        total_anchors += len(anchors)
        expected_mask = torch.zeros(T, dtype=torch.bool)
        for a in anchors:
            expected_mask[a : a + C] = True

        rm_scores = fields["rm_scores"]
        assert rm_scores.shape == (T,)
        assert torch.equal(rm_scores != 0, expected_mask), (anchors, rm_scores.tolist())
        logprobs = output.extra_fields["omniopd_student"]["logprobs"]
        sampled_lp = [float(lp_LV[P - 1 + t, output.response_ids[t]]) for t in range(T)]
        assert np.allclose(logprobs, sampled_lp, atol=1e-4)
        for a in anchors:
            chunk = rm_scores[a : a + C]
            assert torch.all(chunk == chunk[0])
            pi_bar = math.exp(sum(sampled_lp[a : a + C]) / C)
            k_sem = float(chunk[0]) * (N + ALPHA) - ALPHA * pi_bar
            assert -1e-4 <= k_sem <= N + 1e-4, (a, float(chunk[0]), pi_bar)
        info = fields["extra_fields"]["reward_extra_info"]
        assert "omniopd_token_scores" not in info and info["omniopd_row/chunks"] == len(anchors)
        assert "omniopd_student" not in fields["extra_fields"]  # per-token lists stay out of TransferQueue
        logged = json.loads(info["omniopd_audit"])
        assert [(c["start"], c["end"]) for c in logged["chunks"]] == [(a, a + C) for a in anchors]
        assert info["audit/entropy_source"] == "rollout_topk"
        assert info["acc"] in (0.0, 1.0)  # verl's gsm8k scorer, reported (lambda = 0: not mixed in)
        rows_scores.append(rm_scores)
        rows_masks.append(fields["response_mask"])

    assert teacher_calls == total_anchors  # one /v1/completions call (n=N) per anchor, no retries

    # the v1 trainer pads rm_scores to a batch and calls compute_advantage with our estimator
    width = max(len(s) for s in rows_scores) + 3
    scores_BT = torch.zeros(len(rows_scores), width)
    mask_BT = torch.zeros(len(rows_scores), width, dtype=torch.long)
    for b, (s, m) in enumerate(zip(rows_scores, rows_masks, strict=True)):
        scores_BT[b, : len(s)] = s
        mask_BT[b, : len(m)] = m
    data = DataProto.from_dict(
        tensors={"token_level_rewards": scores_BT, "token_level_scores": scores_BT, "response_mask": mask_BT},
        non_tensors={"uid": np.array(["prompt-0", "prompt-1"], dtype=object)},
    )
    data = compute_advantage(data, adv_estimator=cfg.algorithm.adv_estimator, config=cfg.algorithm)
    assert torch.equal(data.batch["advantages"], scores_BT * mask_BT)
