"""The `omniopd_agent` loop: the student side of OmniOPD inside verl's agent-loop workers.

verl gives the student's server client (`LLMServerClient`) only to agent loops, so what the audit
needs from the student is gathered here, per trajectory, right after it finishes:
1. the response, exactly as verl's `single_turn_agent` generates it (subclass, same code path);
2. the sampled tokens' log-probs (`rollout.calculate_log_probs`, verl's default) for the prior pi_bar;
3. when the scheduler needs entropies (`omniopd.entropy_source='rollout_topk'`): one more call to the
   same rollout server, prompt + response with `max_tokens=1, prompt_logprobs=k`, the mechanism verl's
   own OPD teacher uses; the top-k log-probs of every response position give `topk_entropy` (exact on
   the top k, a bounded tail). It is a prefill only and overlaps with the other trajectories' decoding.
These go into `extra_fields['omniopd_student']`; verl streams the trajectory to the `omniopd` reward
manager (teacher, similarity, pi_hat), whose dense scores come back in
`extra_fields['reward_extra_info']`; `OmniOPDAgentLoopOutput.as_dict()` writes them as `rm_scores`,
which verl's v1 trainer stores and hands to the `omniopd` estimator as `token_level_rewards`.

Registered in the agent-loop workers through `omniopd_verl/config/agent_loops.yaml`
(`actor_rollout_ref.rollout.agent.agent_loop_config_path`), so `import verl` stays light.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from uuid import uuid4

import torch
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

from omniopd_verl.errors import GuardError
from omniopd_verl.verl_integration.names import AUDIT_MASK_KEY, STUDENT_KEY, TOKEN_SCORES_KEY

logger = logging.getLogger("omniopd_verl.agent_loop")
logger.setLevel(os.environ.get("OMNIOPD_LOGGING_LEVEL", "INFO"))


class OmniOPDAgentLoopOutput(AgentLoopOutput):
    """An AgentLoopOutput whose `rm_scores` are the dense OmniOPD token scores, not one scalar."""

    def as_dict(self) -> dict[str, Any]:
        info = self.extra_fields.get("reward_extra_info")
        scores = info.get(TOKEN_SCORES_KEY) if isinstance(info, dict) else None
        if scores is None:
            raise GuardError(
                "omniopd_agent trajectory has no dense scores (extra_fields['reward_extra_info']"
                f"['{TOKEN_SCORES_KEY}']): the 'omniopd' reward manager must score it in verl's streaming "
                "reward loop (reward.reward_manager.name=omniopd; no colocated reward model)"
            )
        if len(scores) != len(self.response_ids):
            raise GuardError(f"{len(scores)} dense scores for a response of {len(self.response_ids)} tokens")
        out = super().as_dict()
        out["rm_scores"] = torch.tensor(scores, dtype=torch.float32)
        mask = info.get(AUDIT_MASK_KEY)
        out[AUDIT_MASK_KEY] = torch.tensor(mask if mask is not None else [0] * len(scores), dtype=torch.int64)
        # keep only scalars in what verl stores and logs: the per-token scores now live in rm_scores
        extra = dict(out.get("extra_fields") or {})
        extra["reward_extra_info"] = {k: v for k, v in info.items() if k not in (TOKEN_SCORES_KEY, AUDIT_MASK_KEY)}
        extra.pop(STUDENT_KEY, None)  # consumed by the reward manager; 2 x T floats per row need not reach TQ
        out["extra_fields"] = extra
        return out


_warned_no_frame = False


def is_validation() -> bool:
    """Whether this trajectory belongs to a validation batch.

    verl 0.9.1 passes `validate` to `AgentLoopWorker._run_agent_loop(sampling_params, trajectory, ...)` (its
    `trajectory["validate"]`) but not to the agent loop, which that coroutine awaits: its frame is on the
    call stack while the agent loop runs (checked against the pinned verl in verl_private.py). The stack is
    walked, not the task's outermost coroutine: Ray wraps actor methods for tracing (its `_resume_span`
    wrapper, whose locals are `_args`/`_kwargs`), so the task's own frame need not be `_run_agent_loop`'s.
    Not found (a caller other than verl's worker): False, with a warning once."""
    import sys

    global _warned_no_frame
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_run_agent_loop":
            trajectory = frame.f_locals.get("trajectory")
            if isinstance(trajectory, dict):
                return bool(trajectory.get("validate", False))
        frame = frame.f_back
    if not _warned_no_frame:
        _warned_no_frame = True
        logger.warning(
            "omniopd_agent: no verl AgentLoopWorker._run_agent_loop frame above this agent loop: validation "
            "trajectories cannot be told from training ones and are audited like them"
        )
    return False


class OmniOPDAgentLoop(SingleTurnAgentLoop):
    """verl's single-turn loop plus the student-side inputs of the audit (see the module docstring)."""

    _omniopd = None  # OmniOPDConfig, parsed once per process
    _needs_entropy: bool | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cls = type(self)
        if cls._omniopd is None:
            from omniopd_verl import registry
            from omniopd_verl.verl_integration.checks import (
                check_kl_anchor_wiring,
                check_run_wiring,
                omniopd_config_from_verl,
            )
            from omniopd_verl.verl_integration.self_check import self_check

            self_check()
            from omniopd_verl.verl_integration import verl_private

            verl_private.check("AgentLoopWorker._run_agent_loop")  # is_validation() reads its frame
            cfg = omniopd_config_from_verl(self.config)
            check_kl_anchor_wiring(self.config, cfg)  # main_ppo runs none of the CLI's checks
            check_run_wiring(self.config, cfg)
            cls._needs_entropy = bool(getattr(registry.load("schedulers", cfg.scheduler), "needs_entropy", True))
            cls._omniopd = cfg
            logger.warning(
                "OmniOPD agent loop: entropy_source=%s (k=%d) for scheduler %s%s",
                cfg.entropy_source,
                cfg.rollout_topk,
                cfg.scheduler,
                "" if cls._needs_entropy else " (needs no entropy: none computed)",
            )

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        output = await super().run(sampling_params, **kwargs)
        cfg = self._omniopd
        T = len(output.response_ids)
        if output.response_logprobs is None or len(output.response_logprobs) != T:
            raise GuardError(
                "omniopd_agent needs the sampled tokens' log-probs for every response token: set "
                "actor_rollout_ref.rollout.calculate_log_probs=True"
            )
        entropy, source = None, None
        if self._needs_entropy:
            if cfg.entropy_source != "rollout_topk":
                raise GuardError(
                    f"omniopd.entropy_source={cfg.entropy_source!r} is not available inside verl's rollout: "
                    "allowed 'rollout_topk' (see docs/verl.md)"
                )
            entropy = await self.rollout_topk_entropy(output.prompt_ids, output.response_ids)
            source = "rollout_topk"
        output.extra_fields[STUDENT_KEY] = {
            "logprobs": [float(x) for x in output.response_logprobs],
            "entropy": entropy,
            "entropy_source": source or cfg.entropy_source,
            "validate": is_validation(),  # the reward manager gives validation no teacher call (by default)
        }
        return OmniOPDAgentLoopOutput(**{name: getattr(output, name) for name in output.model_fields_set})

    async def rollout_topk_entropy(self, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
        """Per-response-token entropy estimate from the rollout server's top-k prompt log-probs."""
        from omniopd_verl.core import topk_entropy

        k = self._omniopd.rollout_topk
        out = await self.server_manager.generate(
            request_id=uuid4().hex,
            prompt_ids=list(prompt_ids) + list(response_ids),
            sampling_params={"max_tokens": 1, "temperature": 1.0, "prompt_logprobs": k, "detokenize": False},
        )
        rows = (out.extra_fields or {}).get("prompt_logprobs")
        P, T = len(prompt_ids), len(response_ids)
        if rows is None or len(rows) != P + T:
            raise GuardError(
                f"the rollout server returned {None if rows is None else len(rows)} prompt_logprobs rows for "
                f"{P + T} tokens; it must support prompt_logprobs (vLLM/SGLang do; vLLM needs max_logprobs >= {k})"
            )
        # verl's layout: row i holds the top-k of the distribution that produced token i + 1, so
        # response token t (sequence position P + t) was drawn from row P + t - 1.
        block = rows[P - 1 : P - 1 + T]
        topk_TK = torch.tensor(
            [[float("-inf") if v is None else float(v) for v in row[:k]] for row in block], dtype=torch.float64
        )
        return topk_entropy(topk_TK, vocab_size=max(len(self.tokenizer), k)).estimate.tolist()
