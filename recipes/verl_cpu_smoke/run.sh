#!/usr/bin/env bash
# OmniOPD through verl 0.9.1's real trainer on CPU, 2 steps (see README.md). From any directory:
#   recipes/verl_cpu_smoke/run.sh [hydra overrides ...]
#   recipes/verl_cpu_smoke/run.sh grpo [hydra overrides ...]    # the baseline_grpo recipe, same overlay
# Knobs: SMOKE_DIR (tiny model + data, default runs/verl_cpu_smoke), TEACHER_PORT (default 18230).
# Starts the project's CPU teacher server on 127.0.0.1 (the tiny model as teacher), runs
# `omniopd-verl train --config recipes/verl_cpu_smoke/verl_cpu_smoke.yaml`, stops the server, and exits 0
# only if verl printed its step:2 line with the OmniOPD metrics in it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../common/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common/lib.sh"
cd "${OMNIOPD_REPO_ROOT}"
if [[ -x .venv/bin/python ]]; then PATH="${OMNIOPD_REPO_ROOT}/.venv/bin:${PATH}"; fi
require_verl_091

export SMOKE_DIR="${SMOKE_DIR:-${OMNIOPD_REPO_ROOT}/runs/verl_cpu_smoke}"
export TEACHER_PORT="${TEACHER_PORT:-18230}"
export VERL_PLATFORM=cpu OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
mkdir -p "${SMOKE_DIR}"
python -m omniopd_verl.verl_integration.cpu.smoke prepare "${SMOKE_DIR}"
LOG="${SMOKE_DIR}/train.log"

if [[ "${1:-}" == "grpo" ]]; then
  shift
  log "GRPO (recipes/baseline_grpo) + the CPU overlay, 2 steps; log ${LOG}"
  python -m verl.trainer.main_ppo --config-path "${OMNIOPD_REPO_ROOT}/recipes/baseline_grpo" \
    --config-name baseline_grpo 'hydra.searchpath=[pkg://verl.trainer.config,pkg://omniopd_verl.config]' \
    +omniopd_platform=cpu \
    data.train_files="${SMOKE_DIR}/data/train.parquet" data.val_files="${SMOKE_DIR}/data/train.parquet" \
    data.train_batch_size=2 data.max_prompt_length=64 data.max_response_length=16 data.dataloader_num_workers=0 \
    actor_rollout_ref.model.path="${SMOKE_DIR}/tiny_llama" actor_rollout_ref.model.enable_gradient_checkpointing=false \
    actor_rollout_ref.actor.ppo_mini_batch_size=2 actor_rollout_ref.actor.ppo_max_token_len_per_gpu=1024 \
    actor_rollout_ref.ref.fsdp_config.param_offload=false \
    actor_rollout_ref.rollout.n=2 actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=1024 \
    trainer.total_training_steps=2 trainer.val_before_train=false trainer.test_freq=-1 trainer.save_freq=-1 \
    trainer.logger='[console]' trainer.default_local_dir="${SMOKE_DIR}/checkpoints_grpo" "$@" 2>&1 | tee "${LOG}"
  grep -a "step:2 - " "${LOG}" > /dev/null || { log "no step:2 line: the run did not finish"; exit 1; }
  log "GRPO: 2 steps done"
  exit 0
fi

python -m omniopd_verl.serving.openai_compat --model "${SMOKE_DIR}/tiny_llama" --port "${TEACHER_PORT}" \
  > "${SMOKE_DIR}/teacher.log" 2>&1 &
TEACHER_PID=$!
export TEACHER_PID
trap 'stop_teacher' EXIT
waited=0
until curl -sf "http://127.0.0.1:${TEACHER_PORT}/v1/models" > /dev/null; do
  if ! kill -0 "${TEACHER_PID}" 2> /dev/null || (( waited >= 120 )); then
    log "the teacher server did not start; see ${SMOKE_DIR}/teacher.log"
    exit 1
  fi
  sleep 1
  waited=$(( waited + 1 ))
done
log "teacher server up on 127.0.0.1:${TEACHER_PORT} (${waited}s); training, log ${LOG}"

omniopd-verl train --config recipes/verl_cpu_smoke/verl_cpu_smoke.yaml "$@" 2>&1 | tee "${LOG}"
stop_teacher
trap - EXIT
line="$(grep -a -o "step:2 - .*" "${LOG}" | tail -1 || true)"
if [[ -z "${line}" || "${line}" != *"audit/pi_hat_mean"* || "${line}" != *"teacher/calls"* ]]; then
  log "no step:2 line with the OmniOPD metrics: the run did not finish"
  exit 1
fi
log "step 2 reached; OmniOPD metrics:"
tr ' ' '\n' <<< "${line}" | grep -E "^(audit|teacher)/" >&2
