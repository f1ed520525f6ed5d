#!/usr/bin/env bash
# Serve an open-weight teacher with `vllm serve` in the foreground, for recipes whose teacher runs on
# another node. Prefix caching is on: OmniOPD sends one response's nested prefixes in ascending order.
#   TEACHER_MODEL=Qwen/Qwen3-32B TEACHER_TP=8 recipes/common/serve_teacher.sh
# then on the training node: TEACHER_API_BASE=http://<this-host>:8000/v1
set -euo pipefail
exec vllm serve "${TEACHER_MODEL:-Qwen/Qwen3-32B}" \
  --tensor-parallel-size "${TEACHER_TP:-8}" --host "${TEACHER_HOST:-0.0.0.0}" --port "${TEACHER_PORT:-8000}" \
  --enable-prefix-caching --max-model-len "${TEACHER_MAX_MODEL_LEN:-8192}" \
  --gpu-memory-utilization "${TEACHER_GPU_MEMORY_UTILIZATION:-0.9}"
