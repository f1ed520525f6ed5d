"""verl without vLLM or an accelerator: what makes verl 0.9.1's real trainer run on a laptop or in CI.

- `platform`: the `cpu` platform (`VERL_PLATFORM=cpu`);
- `hf_rollout` + `hf_generation`: the `hf` rollout backend (transformers; CPU or one CUDA GPU), an
  adapter over the project's one sampling loop (runtime/generation.py);
- `trainer`: the `cpu_sync` trainer mode, its gloo worker and verl's FSDP2 engine registered for "cpu";
- `smoke`: the tiny model, data and environment of recipes/verl_cpu_smoke.

The rest of verl_integration/ is the seam with verl itself (estimator, reward manager, agent loop,
the `omniopd_sync` trainer mode); plugin.py registers this room's pieces with verl (cheap: nothing here
is imported until verl asks for the platform, the rollout or the trainer mode, except the trainer).
"""
