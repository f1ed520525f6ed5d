#!/usr/bin/env bash
# OmniOPD, Qwen3-1.7B student (FSDP) <- a black-box API teacher through litellm. No teacher GPUs: all
# 8 GPUs of one node train the student. Usage:
#   ANTHROPIC_API_KEY=... ./run.sh claude_haiku [hydra overrides...]
#   GEMINI_API_KEY=...    ./run.sh gemini_flash [hydra overrides...]
# verl 0.9.1. Environment knobs: STUDENT_MODEL TEACHER_MODEL STUDENT_GPUS OMNIOPD_DATA
# OMNIOPD_TEACHER_CACHE RUN_DIR. Keys are read from the environment by the teacher, never written anywhere.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../common/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common/lib.sh"
cd "${OMNIOPD_REPO_ROOT}"
require_verl_091

TEACHER="${1:-}"
case "${TEACHER}" in
  claude_haiku) KEY_VAR=ANTHROPIC_API_KEY ;;
  gemini_flash) KEY_VAR=GEMINI_API_KEY ;;
  *) log "usage: $0 claude_haiku|gemini_flash [hydra overrides...]"; exit 2 ;;
esac
shift
if [[ -z "${!KEY_VAR:-}" ]]; then
  log "${KEY_VAR} is not set: the ${TEACHER} teacher reads its key from it"
  exit 2
fi

RECIPE=recipes/omniopd_qwen3_1p7b_from_api
export STUDENT_MODEL="${STUDENT_MODEL:-Qwen/Qwen3-1.7B}"
export STUDENT_GPUS="${STUDENT_GPUS:-8}"
export OMNIOPD_DATA="${OMNIOPD_DATA:-${OMNIOPD_REPO_ROOT}/data/verl}"
RUN_DIR="${RUN_DIR:-${OMNIOPD_REPO_ROOT}/runs/omniopd_qwen3_1p7b_from_${TEACHER}}"
# one cache per teacher: a rerun (or a resumed run) never pays twice for the same audit
export OMNIOPD_TEACHER_CACHE="${OMNIOPD_TEACHER_CACHE:-${RUN_DIR}/teacher_cache.sqlite}"
# litellm's price table ships with it; do not fetch it at start-up
export LITELLM_LOCAL_MODEL_COST_MAP=True
mkdir -p "${RUN_DIR}"

prepare_data "${OMNIOPD_DATA}" dapo_math_17k,math500,aime24,aime25,amc23
omniopd-verl train --config "${RECIPE}/${TEACHER}.yaml" \
  trainer.default_local_dir="${RUN_DIR}/checkpoints" "$@"

merge_and_eval fsdp "${RUN_DIR}/checkpoints" "${RUN_DIR}"
