"""Every name OmniOPD registers in verl, and the keys its verl pieces pass to each other.

One module with no imports, so the plugin, the checks, the CLI and the tests agree on them without
importing each other (issue 9: the names left plugin.py).
"""

ESTIMATOR_NAME = "omniopd"  # algorithm.adv_estimator
REWARD_MANAGER_NAME = "omniopd"  # reward.reward_manager.name (source=register)
AGENT_LOOP_NAME = "omniopd_agent"  # actor_rollout_ref.rollout.agent.default_agent_loop
RESOLVER_NAME = "omniopd_verl.resource"  # ${omniopd_verl.resource:<file in omniopd_verl/config>}

HF_ROLLOUT_NAME = "hf"  # actor_rollout_ref.rollout.name: the transformers rollout backend
CPU_PLATFORM_NAME = "cpu"  # VERL_PLATFORM=cpu selects the CPU platform in every process
SYNC_TRAINER_MODE = "omniopd_sync"  # trainer.v1.trainer_mode: verl's sync trainer + OmniOPD step metrics
CPU_TRAINER_MODE = "cpu_sync"  # trainer.v1.trainer_mode on CPU: the same, with a CPU resource pool

# agent loop -> reward manager: the student's per-token log-probs / entropies (extra_fields)
STUDENT_KEY = "omniopd_student"
# reward manager -> agent loop output: the dense per-token scores (reward_extra_info), become rm_scores
TOKEN_SCORES_KEY = "omniopd_token_scores"
# reward manager -> trainer: per-trajectory audit/teacher counts (reward_extra_info), summed per step
ROW_STATS_PREFIX = "omniopd_row/"
# reward manager -> agent loop output -> TransferQueue field: the audited-token mask (0/1 per response
# token), read by the OmniOPD trainer modes for advantage='centered_batch'
AUDIT_MASK_KEY = "omniopd_audit_mask"
# distillation.distillation_loss.loss_mode of omniopd.kl_anchor=topk_ref: verl's forward_kl_topk on
# unaudited tokens only (kl_anchor.py), with the reference model as the "teacher"
TOPK_REF_LOSS_NAME = "omniopd_forward_kl_topk_unaudited"
# the teacher engine verl runs the reference on, on CPU: verl accepts only vllm/sglang teacher engines
# (workers/config/distillation.py), so on the CPU platform `sglang` is served by the hf rollout
CPU_TEACHER_ENGINE_ALIAS = "sglang"
