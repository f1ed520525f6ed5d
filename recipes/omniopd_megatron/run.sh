#!/usr/bin/env bash
# OmniOPD on Megatron: Qwen3-8B student, TP=2 x PP=2 x DP=2 on this 8-GPU node; the Qwen3-32B teacher
# is served on another node (run recipes/common/serve_teacher.sh there) and reached at TEACHER_API_BASE.
#   TEACHER_API_BASE=http://teacher-node:8000/v1 ./run.sh [hydra overrides...]
# verl 0.9.1 with its megatron extra (megatron-core 0.18, mbridge, transformer-engine; verl's docker
# image is the easy way). Environment knobs: STUDENT_MODEL TEACHER_MODEL TEACHER_API_BASE OMNIOPD_DATA
# OMNIOPD_TEACHER_CACHE RUN_DIR.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../common/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common/lib.sh"
cd "${OMNIOPD_REPO_ROOT}"
require_verl_091

if [[ -z "${TEACHER_API_BASE:-}" ]]; then
  log "set TEACHER_API_BASE to the teacher server (e.g. http://teacher-node:8000/v1); start it with recipes/common/serve_teacher.sh"
  exit 2
fi
export TEACHER_API_BASE
export STUDENT_MODEL="${STUDENT_MODEL:-Qwen/Qwen3-8B}"
export TEACHER_MODEL="${TEACHER_MODEL:-Qwen/Qwen3-32B}"
export OMNIOPD_DATA="${OMNIOPD_DATA:-${OMNIOPD_REPO_ROOT}/data/verl}"
RUN_DIR="${RUN_DIR:-${OMNIOPD_REPO_ROOT}/runs/omniopd_megatron_qwen3_8b}"
export OMNIOPD_TEACHER_CACHE="${OMNIOPD_TEACHER_CACHE:-${RUN_DIR}/teacher_cache.sqlite}"
mkdir -p "${RUN_DIR}"

wait_for_server "${TEACHER_API_BASE}" 60
prepare_data "${OMNIOPD_DATA}" dapo_math_17k,math500,aime24,aime25,amc23
omniopd-verl train --config recipes/omniopd_megatron/omniopd_qwen3_8b_megatron.yaml \
  trainer.default_local_dir="${RUN_DIR}/checkpoints" "$@"

merge_and_eval megatron "${RUN_DIR}/checkpoints" "${RUN_DIR}"
