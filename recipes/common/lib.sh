#!/usr/bin/env bash
# Shared helpers for the recipe launch scripts (sourced, not run): data preparation, a vLLM teacher
# server with a health wait and cleanup, and checkpoint -> HF -> `omniopd-verl eval`.
# Targets verl 0.9.1 (see recipes/README.md). Every function fails loudly (set -euo pipefail in callers).

# Repository root (two levels above this file), so recipes run from any working directory.
OMNIOPD_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export OMNIOPD_REPO_ROOT

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

require_verl_091() {
  local version
  version="$(python -c 'import verl; print(verl.__version__)')"
  if [[ "${version}" != "0.9.1" ]]; then
    log "these recipes target verl 0.9.1; found verl ${version}. Install with: pip install -e '.[vllm]'"
    return 1
  fi
}

# prepare_data OUT_DIR NAME[,NAME...]: benchmark files -> verl parquet under OUT_DIR
prepare_data() {
  local out_dir="$1" names="$2"
  log "preparing ${names} into ${out_dir}"
  omniopd-verl data prepare --benchmarks "${names}" --out "${out_dir}"
}

# wait_for_server URL TIMEOUT_S: poll an OpenAI-compatible server's /models until it answers
wait_for_server() {
  local url="$1" timeout_s="$2" waited=0
  until curl -sf "${url}/models" > /dev/null; do
    if (( waited >= timeout_s )); then
      log "server at ${url} not up after ${timeout_s}s"
      return 1
    fi
    sleep 10
    waited=$(( waited + 10 ))
  done
  log "server at ${url} is up (${waited}s)"
}

# start_vllm_teacher MODEL GPU_LIST TP PORT LOGFILE: `vllm serve` in the background (prefix caching on,
# so the nested prefixes of one response are reused); sets TEACHER_PID and kills it when the script exits.
start_vllm_teacher() {
  local model="$1" gpus="$2" tp="$3" port="$4" logfile="$5"
  log "starting vllm serve ${model} on GPUs ${gpus} (TP=${tp}) port ${port}; log ${logfile}"
  CUDA_VISIBLE_DEVICES="${gpus}" vllm serve "${model}" \
    --tensor-parallel-size "${tp}" --port "${port}" --host 127.0.0.1 \
    --enable-prefix-caching --max-model-len "${TEACHER_MAX_MODEL_LEN:-8192}" \
    --gpu-memory-utilization "${TEACHER_GPU_MEMORY_UTILIZATION:-0.9}" > "${logfile}" 2>&1 &
  TEACHER_PID=$!
  export TEACHER_PID
  trap 'stop_teacher' EXIT
  wait_for_server "http://127.0.0.1:${port}/v1" "${TEACHER_STARTUP_TIMEOUT_S:-1800}"
}

stop_teacher() {
  if [[ -n "${TEACHER_PID:-}" ]] && kill -0 "${TEACHER_PID}" 2> /dev/null; then
    log "stopping the teacher server (pid ${TEACHER_PID})"
    kill "${TEACHER_PID}"
    wait "${TEACHER_PID}" || true
  fi
}

# latest_checkpoint CKPT_ROOT: the newest global_step_* folder verl wrote under CKPT_ROOT
latest_checkpoint() {
  local root="$1" step
  step="$(cat "${root}/latest_checkpointed_iteration.txt")"
  printf '%s/global_step_%s\n' "${root}" "${step}"
}

# eval_model MODEL_DIR OUT_DIR: with vLLM, greedy pass@1 on the seven math benchmarks, avg@16 /
# pass@k at temperature 0.6 on the small competition sets (AIME 24/25, AMC 23), and greedy pass@1 on
# HumanEval and MBPP (sandboxed tests). JSON reports land in OUT_DIR.
eval_model() {
  local model_dir="$1" out_dir="$2"
  omniopd-verl eval --model "${model_dir}" --backend vllm --benchmarks math \
    --max-new-tokens "${EVAL_MAX_NEW_TOKENS:-4096}" --output "${out_dir}/eval_greedy.json"
  omniopd-verl eval --model "${model_dir}" --backend vllm --benchmarks aime24,aime25,amc23 \
    --n 16 --temperature 0.6 --top-p 0.95 --pass-k 1,8,16 \
    --max-new-tokens "${EVAL_MAX_NEW_TOKENS:-4096}" --output "${out_dir}/eval_avg16.json"
  omniopd-verl eval --model "${model_dir}" --backend vllm --benchmarks code \
    --max-new-tokens "${EVAL_MAX_NEW_TOKENS:-4096}" --output "${out_dir}/eval_code.json"
}

# merge_and_eval BACKEND(fsdp|megatron) CKPT_ROOT OUT_DIR: merge the latest actor checkpoint into a
# Hugging Face folder (verl.model_merger) and evaluate it.
merge_and_eval() {
  local backend="$1" ckpt_root="$2" out_dir="$3" step_dir
  step_dir="$(latest_checkpoint "${ckpt_root}")"
  log "merging ${step_dir}/actor into ${out_dir}/hf"
  python -m verl.model_merger merge --backend "${backend}" --local_dir "${step_dir}/actor" \
    --target_dir "${out_dir}/hf"
  eval_model "${out_dir}/hf" "${out_dir}"
}
