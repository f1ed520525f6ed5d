#!/usr/bin/env bash
# OmniOPD, Qwen3-1.7B student (FSDP) <- Qwen3-32B teacher behind `vllm serve` (openai_completions).
# One node with 8 GPUs (80 GB): GPUs 0-3 train the student (hybrid actor/rollout), GPUs 4-7 serve the
# teacher with TP=4. Extra arguments are Hydra overrides, e.g.  ./run.sh omniopd.samples=4
# verl 0.9.1. Environment knobs: STUDENT_MODEL TEACHER_MODEL STUDENT_GPUS TEACHER_GPUS TEACHER_TP
# TEACHER_PORT OMNIOPD_DATA OMNIOPD_TEACHER_CACHE RUN_DIR.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../common/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common/lib.sh"
cd "${OMNIOPD_REPO_ROOT}"
require_verl_091

RECIPE=recipes/omniopd_qwen3_1p7b_from_qwen3_32b
export STUDENT_MODEL="${STUDENT_MODEL:-Qwen/Qwen3-1.7B}"
export TEACHER_MODEL="${TEACHER_MODEL:-Qwen/Qwen3-32B}"
export STUDENT_GPUS="${STUDENT_GPUS:-4}"
TEACHER_GPUS="${TEACHER_GPUS:-4,5,6,7}"
TEACHER_TP="${TEACHER_TP:-4}"
TEACHER_PORT="${TEACHER_PORT:-8000}"
export TEACHER_API_BASE="http://127.0.0.1:${TEACHER_PORT}/v1"
export OMNIOPD_DATA="${OMNIOPD_DATA:-${OMNIOPD_REPO_ROOT}/data/verl}"
RUN_DIR="${RUN_DIR:-${OMNIOPD_REPO_ROOT}/runs/omniopd_qwen3_1p7b_from_qwen3_32b}"
export OMNIOPD_TEACHER_CACHE="${OMNIOPD_TEACHER_CACHE:-${RUN_DIR}/teacher_cache.sqlite}"
mkdir -p "${RUN_DIR}"

prepare_data "${OMNIOPD_DATA}" dapo_math_17k,math500,aime24,aime25,amc23
start_vllm_teacher "${TEACHER_MODEL}" "${TEACHER_GPUS}" "${TEACHER_TP}" "${TEACHER_PORT}" "${RUN_DIR}/teacher.log"

student_devices="$(seq -s, 0 $(( STUDENT_GPUS - 1 )))"
CUDA_VISIBLE_DEVICES="${student_devices}" omniopd-verl train \
  --config "${RECIPE}/omniopd_qwen3_1p7b_from_qwen3_32b.yaml" \
  trainer.default_local_dir="${RUN_DIR}/checkpoints" "$@"

merge_and_eval fsdp "${RUN_DIR}/checkpoints" "${RUN_DIR}"
