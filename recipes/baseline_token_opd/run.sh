#!/usr/bin/env bash
# Baseline: white-box token-level on-policy distillation (verl 0.9.1's built-in distillation),
# Qwen3-1.7B student <- Qwen3-32B teacher, one 8-GPU node: verl places the student on STUDENT_GPUS
# (default 4) and the teacher on its own pool of TEACHER_GPUS (default 4, TP=4). Extra arguments are
# Hydra overrides. Environment knobs: STUDENT_MODEL TEACHER_MODEL STUDENT_GPUS TEACHER_GPUS OMNIOPD_DATA RUN_DIR.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../common/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common/lib.sh"
cd "${OMNIOPD_REPO_ROOT}"
require_verl_091

export STUDENT_MODEL="${STUDENT_MODEL:-Qwen/Qwen3-1.7B}"
export TEACHER_MODEL="${TEACHER_MODEL:-Qwen/Qwen3-32B}"
export STUDENT_GPUS="${STUDENT_GPUS:-4}"
export TEACHER_GPUS="${TEACHER_GPUS:-4}"
export OMNIOPD_DATA="${OMNIOPD_DATA:-${OMNIOPD_REPO_ROOT}/data/verl}"
RUN_DIR="${RUN_DIR:-${OMNIOPD_REPO_ROOT}/runs/baseline_token_opd}"
mkdir -p "${RUN_DIR}"

prepare_data "${OMNIOPD_DATA}" dapo_math_17k,math500,aime24,aime25,amc23
python -m verl.trainer.main_ppo --config-path "${OMNIOPD_REPO_ROOT}/recipes/baseline_token_opd" \
  --config-name baseline_token_opd trainer.default_local_dir="${RUN_DIR}/checkpoints" "$@"

merge_and_eval fsdp "${RUN_DIR}/checkpoints" "${RUN_DIR}"
