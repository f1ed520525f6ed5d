"""GRPO vs OmniOPD through verl's real trainer (`main_ppo`, CPU mode) at equal batch: verl's timing_s/*.

    python benchmarks/bench_verl_step.py [--steps 4] [--latency-s 0.2] [--batch 2] [--n 2] [--response-length 16]

Both runs use the same tiny random Llama, data, batch, rollout n, response length and CPU overlay
(`+omniopd_platform=cpu`, the `hf` rollout). GRPO is the baseline_grpo recipe's algorithm; OmniOPD is
the verl_cpu_smoke recipe (M=2 chunks of C=4 tokens, N=2) against this project's scripted HTTP teacher
on 127.0.0.1 with a fixed latency per request (`--latency-s`). For each run it prints verl's
`timing_s/*` per step, then the ratio OmniOPD / GRPO of the mean `timing_s/step` and `timing_s/gen`
over the steps after the first (step 1 includes warm-up). The question it answers: does the audit hide
behind the rollout? verl streams each finished trajectory to the reward workers while the others still
decode, so the audit adds to `timing_s/gen` only what does not overlap.

Caveat at this size: verl's v1 ReplayBuffer polls for finished trajectories every 2.0 s
(`replay_buffer.py`, `poll_interval`), so `timing_s/gen` comes in multiples of ~2 s and an audit that
finishes inside that window costs nothing measurable; raise `--latency-s` (or the batch) to see it.
It is a benchmark, not a test: numbers depend on the machine and its load (say so when reporting).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], env: dict[str, str]) -> dict[int, dict[str, float]]:
    from omniopd_verl.verl_integration.cpu.smoke import step_metrics_from_log

    proc = subprocess.run(
        [sys.executable, "-m", "verl.trainer.main_ppo", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    log = proc.stdout + proc.stderr
    steps = step_metrics_from_log(log)
    if proc.returncode != 0 or not steps:
        raise SystemExit(f"main_ppo failed (exit {proc.returncode}):\n{log[-3000:]}")
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--latency-s", type=float, default=0.2, help="fixed latency of every teacher request")
    parser.add_argument("--batch", type=int, default=2, help="prompts per step")
    parser.add_argument("--n", type=int, default=2, help="rollouts per prompt")
    parser.add_argument("--response-length", type=int, default=16)
    args = parser.parse_args()

    from omniopd_verl.testing import ScriptedGenerator, serve_fault_server
    from omniopd_verl.verl_integration.cpu.smoke import cpu_env, prepare

    work = Path(tempfile.mkdtemp(prefix="bench_verl_step_"))
    model, data = prepare(work)
    common = [
        f"data.train_files={data}",
        f"data.val_files={data}",
        f"data.train_batch_size={args.batch}",
        "data.max_prompt_length=64",
        f"data.max_response_length={args.response_length}",
        "data.dataloader_num_workers=0",
        f"actor_rollout_ref.model.path={model}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.batch}",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096",
        f"actor_rollout_ref.rollout.n={args.n}",
        "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=4096",
        f"trainer.total_training_steps={args.steps}",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "trainer.logger=[console]",
    ]
    grpo = [
        f"--config-path={REPO / 'recipes' / 'baseline_grpo'}",
        "--config-name=baseline_grpo",
        "hydra.searchpath=[pkg://verl.trainer.config,pkg://omniopd_verl.config]",
        "+omniopd_platform=cpu",
        "actor_rollout_ref.model.enable_gradient_checkpointing=false",
        "actor_rollout_ref.ref.fsdp_config.param_offload=false",
        f"trainer.default_local_dir={work / 'ckpt_grpo'}",
        *common,
    ]
    env = cpu_env()
    print(f"GRPO: batch {args.batch} x n={args.n}, {args.response_length} tokens, {args.steps} steps ...", flush=True)
    results = {"grpo": run(grpo, env)}
    with serve_fault_server(generator=ScriptedGenerator(), latency_s=args.latency_s) as server:
        port = server.url.rsplit(":", 1)[1].split("/")[0]
        omniopd = [
            f"--config-path={REPO / 'recipes' / 'verl_cpu_smoke'}",
            "--config-name=verl_cpu_smoke",
            f"omniopd.teacher.api_base=http://127.0.0.1:{port}/v1",
            f"trainer.default_local_dir={work / 'ckpt_omniopd'}",
            *common,
        ]
        print(f"OmniOPD: same batch, teacher latency {args.latency_s} s per request ...", flush=True)
        results["omniopd"] = run(omniopd, env)

    keys = sorted({k for steps in results.values() for m in steps.values() for k in m if k.startswith("timing_s/")})
    for name, steps in results.items():
        print(f"\n{name}: verl timing_s/* per step")
        print("key".ljust(34) + "".join(f"step {s:>2}".rjust(10) for s in sorted(steps)))
        for key in keys:
            print(key.ljust(34) + "".join(f"{steps[s].get(key, float('nan')):10.3f}" for s in sorted(steps)))
    later = {name: [s for s in sorted(steps) if s > 1] or sorted(steps) for name, steps in results.items()}
    print("\nmean over steps after the first (step 1 includes warm-up):")
    for key in ("timing_s/step", "timing_s/gen", "timing_s/update_actor"):
        g = mean(results["grpo"][s][key] for s in later["grpo"])
        o = mean(results["omniopd"][s][key] for s in later["omniopd"])
        print(f"  {key:24s} GRPO {g:8.3f} s   OmniOPD {o:8.3f} s   ratio OmniOPD/GRPO {o / g:6.2f}")
    calls = mean(results["omniopd"][s].get("teacher/calls", 0.0) for s in later["omniopd"])
    print(
        f"  teacher calls per step {calls:.0f} x {args.latency_s} s latency = {calls * args.latency_s:.2f} s if serial"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
