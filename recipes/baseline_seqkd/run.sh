#!/usr/bin/env bash
# Baseline: SeqKD (SFT on teacher samples), one 8-GPU node, verl 0.9.1.
#   1. Qwen3-32B answers SEQKD_PROMPTS training prompts (vLLM, TP=8, temperature 1.0, one sample each);
#   2. math-verify keeps the correct answers; `omniopd-verl data sft` writes chat `messages` parquet;
#   3. verl's SFT trainer fine-tunes Qwen3-1.7B on them; 4. the HF checkpoint is evaluated.
# SEQKD_PROMPTS defaults to 12800 = 200 steps x 64 prompts, the prompt budget of the RL recipes.
# Extra arguments are Hydra overrides for the SFT trainer. Environment knobs: STUDENT_MODEL
# TEACHER_MODEL TEACHER_TP STUDENT_GPUS SEQKD_PROMPTS OMNIOPD_DATA RUN_DIR.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../common/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common/lib.sh"
cd "${OMNIOPD_REPO_ROOT}"
require_verl_091

export STUDENT_MODEL="${STUDENT_MODEL:-Qwen/Qwen3-1.7B}"
TEACHER_MODEL="${TEACHER_MODEL:-Qwen/Qwen3-32B}"
TEACHER_TP="${TEACHER_TP:-8}"
export STUDENT_GPUS="${STUDENT_GPUS:-8}"
SEQKD_PROMPTS="${SEQKD_PROMPTS:-12800}"
export OMNIOPD_DATA="${OMNIOPD_DATA:-${OMNIOPD_REPO_ROOT}/data/verl}"
RUN_DIR="${RUN_DIR:-${OMNIOPD_REPO_ROOT}/runs/baseline_seqkd}"
mkdir -p "${RUN_DIR}"

prepare_data "${OMNIOPD_DATA}" dapo_math_17k,math500,aime24,aime25,amc23
if [[ ! -s "${RUN_DIR}/teacher_samples.jsonl" ]]; then
  log "sampling ${SEQKD_PROMPTS} teacher answers with ${TEACHER_MODEL}"
  omniopd-verl eval --model "${TEACHER_MODEL}" --backend vllm --tensor-parallel-size "${TEACHER_TP}" \
    --benchmarks dapo_math_17k --limit "${SEQKD_PROMPTS}" --temperature 1.0 --max-new-tokens 4096 \
    --save-generations "${RUN_DIR}/teacher_samples.jsonl" --output "${RUN_DIR}/teacher_train_accuracy.json"
fi
omniopd-verl data sft --generations "${RUN_DIR}/teacher_samples.jsonl" --out "${OMNIOPD_DATA}/seqkd/train.parquet"

torchrun --standalone --nproc_per_node "${STUDENT_GPUS}" -m verl.trainer.sft_trainer \
  --config-path "${OMNIOPD_REPO_ROOT}/recipes/baseline_seqkd" --config-name baseline_seqkd \
  trainer.default_local_dir="${RUN_DIR}/checkpoints" "$@"

hf_dir="$(find "${RUN_DIR}/checkpoints" -type d -name huggingface | sort -V | tail -n 1)"
if [[ -z "${hf_dir}" ]]; then
  log "no huggingface/ folder under ${RUN_DIR}/checkpoints (checkpoint.save_contents must include hf_model)"
  exit 1
fi
eval_model "${hf_dir}" "${RUN_DIR}"
