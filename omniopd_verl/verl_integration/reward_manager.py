"""The `omniopd` reward manager: the teacher side of OmniOPD, inside verl's reward-loop workers.

verl 0.9.1 streams every finished trajectory from the agent-loop worker to a `RewardLoopWorker` Ray
actor, which calls `run_single(data)` with that one trajectory (see docs/verl.md for why the audit
runs here). The `omniopd_agent` loop has already put the student's per-token log-probs and entropies
into `extra_fields['omniopd_student']` (they arrive here as `tool_extra_fields`). This manager:
1. rebuilds the `StudentResponse` (prompt text exactly as the student saw it, response ids);
2. runs the real `Auditor` (scheduler -> teacher -> similarity -> pi_hat), one per process;
3. scores the task with verl's scorer (custom `reward.custom_reward_function` or
   `default_compute_score`) when the sample has a ground truth: mixed into the scores with weight
   `omniopd.task_reward_weight` (required when > 0), otherwise only reported as `acc`;
4. returns the dense per-token scores in `reward_extra_info['omniopd_token_scores']`, which
   `OmniOPDAgentLoopOutput.as_dict()` turns into `rm_scores`; every other extra value is a scalar.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from typing import Any

import torch
from verl import DataProto
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from omniopd_verl.verl_integration.names import AUDIT_MASK_KEY, ROW_STATS_PREFIX, STUDENT_KEY, TOKEN_SCORES_KEY

METRICS_EVERY = int(os.environ.get("OMNIOPD_METRICS_EVERY", "64"))

logger = logging.getLogger("omniopd_verl.reward_manager")
logger.setLevel(os.environ.get("OMNIOPD_LOGGING_LEVEL", "INFO"))


def default_task_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """verl's scorer for the dataset names it knows; our graders (omniopd_verl.eval.reward) for the rest.

    verl's `default_compute_score` raises NotImplementedError for the names `omniopd-verl data prepare`
    writes ("gsm8k", "math500", ...), so without this fallback a task reward needs a custom function.
    """
    from verl.utils.reward_score import default_compute_score

    try:
        return default_compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)
    except NotImplementedError:
        from omniopd_verl.eval.reward import compute_score

        return compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)


class OmniOPDRewardManager(RewardManagerBase):
    """Audits one trajectory per `run_single` call; one Auditor (teacher client, similarity model,
    cache, rate limits) per reward-loop worker process, shared by all concurrent calls."""

    _class_initialized = False
    omniopd = None  # OmniOPDConfig
    auditor = None  # omniopd_verl.audit.Auditor
    run_ledger = None  # the run's ledger actor (RayLedger), None outside Ray
    _audited = 0
    _task_score_failed = False

    def __init__(
        self,
        config,
        tokenizer,
        compute_score=None,
        reward_router_address=None,
        reward_model_tokenizer=None,
        **kwargs: Any,
    ):
        super().__init__(config, tokenizer, compute_score)
        from omegaconf import DictConfig, OmegaConf

        config = config if isinstance(config, DictConfig) else OmegaConf.create(dict(config or {}))
        # without reward.custom_reward_function verl hands us its default_compute_score, which rejects the
        # dataset names `omniopd-verl data prepare` writes: use the scorer that falls back to our graders
        no_custom = OmegaConf.select(config, "reward.custom_reward_function", default=None) is not None and (
            OmegaConf.select(config, "reward.custom_reward_function.path", default=None) is None
        )
        self.compute_score = default_task_score if compute_score is None or no_custom else compute_score
        self.is_async_reward_score = inspect.iscoroutinefunction(self.compute_score)

    @classmethod
    def init_class(cls, config, tokenizer) -> None:
        if cls._class_initialized:
            return
        from omniopd_verl import registry
        from omniopd_verl.audit import Auditor
        from omniopd_verl.verl_integration.checks import check_run_wiring, omniopd_config_from_verl
        from omniopd_verl.verl_integration.run_ledger import connect_run_ledger
        from omniopd_verl.verl_integration.self_check import self_check

        self_check()
        cls.omniopd = omniopd_config_from_verl(config)
        check_run_wiring(config, cls.omniopd)
        # budget, rate limits, health and the cache file are the run's, shared by every reward worker
        ledger = cls.run_ledger = connect_run_ledger(config, cls.omniopd)
        cls.auditor = Auditor(
            cls.omniopd, tokenizer, teacher=registry.create_teacher(cls.omniopd.teacher, ledger=ledger)
        )
        cls._class_initialized = True
        logger.warning(
            "OmniOPD reward manager: teacher=%s similarity=%s scheduler=%s M=%d N=%d C=%d alpha=%s "
            "entropy_source=%s advantage=%s task_reward_weight=%s",
            cls.omniopd.teacher.name,
            cls.omniopd.similarity,
            cls.omniopd.scheduler,
            cls.omniopd.chunks,
            cls.omniopd.samples,
            cls.omniopd.chunk_len,
            cls.omniopd.alpha,
            cls.omniopd.entropy_source,
            cls.omniopd.advantage,
            cls.omniopd.task_reward_weight,
        )

    async def run_single(self, data: DataProto) -> dict:
        """Audit one trajectory; dense scores, task accuracy and per-row audit stats in reward_extra_info."""
        from omniopd_verl.advantage import token_scores
        from omniopd_verl.audit import ResponseAudit
        from omniopd_verl.errors import OmniOPDError

        cfg = self.omniopd
        item = data[-1:][0]  # single-turn: the trajectory's one (last) output
        response = self._student_response(item)
        T = len(response.response_ids)
        if self._is_validation(item) and not cfg.audit_validation:  # never trained on: no teacher call
            audit = ResponseAudit(uid=response.uid, response_len=T, entropy_source=response.entropy_source)
        else:
            try:
                audit = await self.auditor.audit_one(response)
            except OmniOPDError as exc:  # budget, failure rate, auth, on_failure=error: verl would retry forever
                return await self._stop_run(str(exc), T)
        info, task = await self._task_info(item, response.response_ids)
        task_B = None if task is None else torch.tensor([task], dtype=torch.float32)
        # step 1 of omniopd_verl.advantage (per row); centred-by-batch is finished by the estimator
        scores = token_scores(
            [audit], torch.ones(1, T, dtype=torch.long), cfg.advantage, task_B, cfg.task_reward_weight
        )
        scores_T = scores.scores_BT[0]
        info[TOKEN_SCORES_KEY] = scores_T.tolist()
        info[AUDIT_MASK_KEY] = [int(x) for x in scores.audit_mask_BT[0]]
        info.update(row_stats(audit, int(scores.audit_mask_BT.sum()), cfg.samples))
        self._log_metrics()
        return {"reward_score": float(scores_T.sum()), "reward_extra_info": info}

    async def _stop_run(self, message: str, T: int) -> dict:
        """Record the teacher failure and mark this trajectory with NaN scores (see fatal.py).

        The run's ledger records the stop first (the first stop of the run wins): every worker's queued calls
        stop, and the worker's report, the driver and every later trajectory name the same cause. A stop the
        ledger made itself (budget, failure rate, auth) is already there; on_failure='error' is not."""
        from omniopd_verl.verl_integration import fatal

        if self.run_ledger is not None:
            try:
                message = str(await self.run_ledger.stop("error", message))
            except Exception as exc:  # noqa: BLE001 - the ledger is gone: report what this worker saw
                logger.warning("OmniOPD: the run's teacher ledger could not record the stop (%s)", exc)
        await asyncio.get_running_loop().run_in_executor(None, fatal.report, message)
        nan = float("nan")
        return {"reward_score": nan, "reward_extra_info": {TOKEN_SCORES_KEY: [nan] * T, "omniopd_error": message}}

    @staticmethod
    def _is_validation(item) -> bool:
        extra = item.non_tensor_batch.get("tool_extra_fields", None) or {}
        student = extra.get(STUDENT_KEY) if isinstance(extra, dict) else None
        return bool(isinstance(student, dict) and student.get("validate"))

    def _student_response(self, item) -> Any:
        """The StudentResponse the Auditor needs, from verl's trajectory and the agent loop's extra fields."""
        from omniopd_verl.audit import StudentResponse
        from omniopd_verl.errors import GuardError

        prompt_ids = item.batch["prompts"]
        response_ids = item.batch["responses"]
        prompt_mask = item.batch["attention_mask"][: prompt_ids.shape[-1]].bool()
        T = int(item.batch["attention_mask"][-response_ids.shape[-1] :].sum())
        valid_prompt = prompt_ids[prompt_mask].tolist()
        extra = item.non_tensor_batch.get("tool_extra_fields", None) or {}
        student = extra.get(STUDENT_KEY) if isinstance(extra, dict) else None
        if student is None:
            raise GuardError(
                "reward manager 'omniopd' got a trajectory without extra_fields['omniopd_student']: set "
                "actor_rollout_ref.rollout.agent.default_agent_loop=omniopd_agent (the shipped omniopd configs do)"
            )
        logprobs_T = torch.tensor(student["logprobs"], dtype=torch.float32)
        entropy_T = None if student.get("entropy") is None else torch.tensor(student["entropy"], dtype=torch.float32)
        if logprobs_T.shape[0] != T or (entropy_T is not None and entropy_T.shape[0] != T):
            raise GuardError(
                f"omniopd_student has {logprobs_T.shape[0]} log-probs / "
                f"{None if entropy_T is None else entropy_T.shape[0]} entropies for a response of {T} tokens"
            )
        raw_prompt = item.non_tensor_batch.get("raw_prompt", None)
        extra_info = item.non_tensor_batch.get("extra_info", None) or {}
        valid_response = response_ids[:T].tolist()
        return StudentResponse(
            uid=f"{item.non_tensor_batch.get('uid', '')}:{item.non_tensor_batch.get('session_id', 0)}",
            seed_key=trajectory_seed_key(valid_prompt, valid_response),
            prompt_text=self.tokenizer.decode(valid_prompt, skip_special_tokens=False),
            response_ids=valid_response,
            logprobs_T=logprobs_T,
            entropy_T=entropy_T,
            entropy_source=student.get("entropy_source") or self.omniopd.entropy_source,
            prompt_messages=[dict(m) for m in raw_prompt] if raw_prompt is not None else None,
            teacher_context=extra_info.get("teacher_context") if isinstance(extra_info, dict) else None,
        )

    async def _task_info(self, item, valid_response: list[int]) -> tuple[dict[str, Any], float | None]:
        """({'acc': ...} or {}, the task reward to train on or None).

        With task_reward_weight > 0 the task reward is required and trained on; with 0 it is only
        reported (verl's validation metrics then show accuracy) when the sample has a ground truth and
        the scorer can score this data.
        """
        if self.omniopd.task_reward_weight > 0:
            task = await self._task_reward(item, valid_response)
            return {"acc": task}, task
        if not self._has_ground_truth(item) or type(self)._task_score_failed:
            return {}, None
        try:
            return {"acc": await self._task_reward(item, valid_response)}, None
        except Exception as exc:  # noqa: BLE001 - a scorer that cannot score this data only loses the metric
            type(self)._task_score_failed = True
            logger.warning("OmniOPD: task accuracy is not reported (the scorer failed: %r)", exc)
            return {}, None

    @staticmethod
    def _has_ground_truth(item) -> bool:
        reward_model = item.non_tensor_batch.get("reward_model", None)
        return isinstance(reward_model, dict) and reward_model.get("ground_truth") is not None

    async def _task_reward(self, item, valid_response: list[int]) -> float:
        """The verified task reward through verl's scorer, as the naive manager computes it."""
        from omniopd_verl.errors import GuardError

        reward_model = item.non_tensor_batch.get("reward_model", None) or {}
        if "ground_truth" not in reward_model:
            raise GuardError(
                "omniopd.task_reward_weight > 0 needs a ground truth per sample (dataset column "
                "reward_model.ground_truth), but this sample has none"
            )
        # the running loop, not self.loop (captured at construction): correct under any event loop
        loop = asyncio.get_running_loop()
        solution = await loop.run_in_executor(
            None, lambda: self.tokenizer.decode(valid_response, skip_special_tokens=True)
        )
        kwargs = dict(
            data_source=item.non_tensor_batch.get("data_source"),
            solution_str=solution,
            ground_truth=reward_model["ground_truth"],
            extra_info=dict(item.non_tensor_batch.get("extra_info", None) or {}),
        )
        if self.is_async_reward_score:
            result = await self.compute_score(**kwargs)
        else:
            result = await loop.run_in_executor(None, lambda: self.compute_score(**kwargs))
        return float(result["score"] if isinstance(result, dict) else result)

    @classmethod
    def _log_metrics(cls) -> None:
        # verl 0.9.1's v1 trainer does not carry reward_extra_info into training metrics, so the
        # audit's own metrics (ALGORITHM.md "Metrics every run should log") go to this worker's log.
        cls._audited += 1
        if cls._audited % METRICS_EVERY == 0:
            metrics = cls.auditor.metrics()
            cls.auditor.reset_metrics()
            logger.info("OmniOPD audit metrics (pid %d): %s", os.getpid(), metrics)


def trajectory_seed_key(prompt_ids: list[int], response_ids: list[int]) -> str:
    """What a verl trajectory's audit draws are keyed on (`StudentResponse.seed_key`): its content.

    verl's `uid` is a uuid4 drawn per prompt per run, so seeds derived from it (part of every teacher cache
    key) differ in a rerun even for the very same trajectory, and the cache never hits. Keyed on the prompt
    and response token ids, a rerun's identical trajectory asks the teacher exactly what was asked before and
    is answered from the cache. It follows that two identical trajectories in one batch (same prompt, same
    response) get identical anchors and identical teacher requests, seeds included: with a cache, the second
    is a hit once the first's answer is stored (two in flight at once both call; a seeded teacher then
    answers both alike). Intended: their audits are the same question. `uid` stays verl's (records, errors)."""
    import hashlib
    import json

    content = json.dumps([[int(t) for t in prompt_ids], [int(t) for t in response_ids]], separators=(",", ":"))
    return hashlib.sha256(content.encode()).hexdigest()[:32]


def row_stats(audit: Any, audited_tokens: int, samples: int) -> dict[str, Any]:
    """One trajectory's raw audit counts for verl's step metrics (step_metrics.py sums them per step),
    plus the audit itself as JSON under 'omniopd_audit': the one serializer's record (audit/records.py,
    the audit CLI's line) without the texts (chunk spans, similarities, k_sem, pi_bar, pi_hat: what a test
    needs to recompute the advantages; verl's metric code skips string values)."""
    import json

    from omniopd_verl.audit.records import audit_record

    record = audit_record(audit, texts=False)
    chunks = record["chunks"]
    out: dict[str, Any] = {
        ROW_STATS_PREFIX + "chunks": float(len(chunks)),
        ROW_STATS_PREFIX + "pi_hat_sum": sum(c["pi_hat"] for c in chunks),
        ROW_STATS_PREFIX + "k_sem_frac_sum": sum(c["k_sem"] / samples for c in chunks),
        ROW_STATS_PREFIX + "pi_bar_sum": sum(c["pi_bar"] for c in chunks),
        ROW_STATS_PREFIX + "audited_tokens": float(audited_tokens),
        ROW_STATS_PREFIX + "response_tokens": float(audit.response_len),
        ROW_STATS_PREFIX + "anchors_dropped": float(audit.anchors_dropped),
        ROW_STATS_PREFIX + "rows_without_audit": float(not chunks),
    }
    for key, value in (audit.teacher or {}).items():
        out[f"{ROW_STATS_PREFIX}teacher/{key}"] = float(value)
    out["audit/entropy_source"] = audit.entropy_source  # a string: verl's metric code skips it
    out["omniopd_audit"] = json.dumps(record)
    return out
