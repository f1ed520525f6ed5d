#!/usr/bin/env bash
# Baseline: GRPO on the verified answer, Qwen3-1.7B on one 8-GPU node, plain verl 0.9.1 main_ppo
# (reward = omniopd_verl.eval.reward: math-verify). Extra arguments are Hydra overrides.
# Environment knobs: STUDENT_MODEL STUDENT_GPUS OMNIOPD_DATA RUN_DIR.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../common/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common/lib.sh"
cd "${OMNIOPD_REPO_ROOT}"
require_verl_091

export STUDENT_MODEL="${STUDENT_MODEL:-Qwen/Qwen3-1.7B}"
export STUDENT_GPUS="${STUDENT_GPUS:-8}"
export OMNIOPD_DATA="${OMNIOPD_DATA:-${OMNIOPD_REPO_ROOT}/data/verl}"
RUN_DIR="${RUN_DIR:-${OMNIOPD_REPO_ROOT}/runs/baseline_grpo}"
mkdir -p "${RUN_DIR}"

prepare_data "${OMNIOPD_DATA}" dapo_math_17k,math500,aime24,aime25,amc23
python -m verl.trainer.main_ppo --config-path "${OMNIOPD_REPO_ROOT}/recipes/baseline_grpo" \
  --config-name baseline_grpo trainer.default_local_dir="${RUN_DIR}/checkpoints" "$@"

merge_and_eval fsdp "${RUN_DIR}/checkpoints" "${RUN_DIR}"
