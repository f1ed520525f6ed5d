#!/usr/bin/env bash
# Quickstart on CPU: SmolLM2-135M-Instruct on GSM8K prompts with the local engine and the demonstration teacher (one arm; `make demo` runs it with a control).
# Run from the repository root after `make setup`; extra arguments are key=value overrides,
# e.g.  recipes/quickstart_cpu/run.sh local.steps=2 omniopd.beta=0.2
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if .venv/bin/omniopd-verl train --help 2>/dev/null | grep -q -- "--engine"; then
  exec .venv/bin/omniopd-verl train --engine local --config recipes/quickstart_cpu/quickstart_cpu.yaml "$@"
fi
# before the `train` subcommand exists, the engine module runs the same code directly
exec .venv/bin/python -m omniopd_verl.local.train --config recipes/quickstart_cpu/quickstart_cpu.yaml "$@"
