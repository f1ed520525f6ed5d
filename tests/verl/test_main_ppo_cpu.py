"""verl's real trainer (`python -m verl.trainer.main_ppo`, v1) end to end on CPU, 2 steps each.

What runs: the CPU platform, the `cpu_sync` trainer, FSDP2 on gloo, the `hf` rollout backend and
verl's own registries, Ray, TransferQueue, reward loop and agent loop; a tiny random Llama with
SmolLM2's tokenizer. OmniOPD's teacher is this project's HTTP server on 127.0.0.1 (real sockets,
scripted texts, injected faults). Checked independently of the code under test:
- rollout vs actor log-probs agree (< 1e-4, verl's own training/rollout_probs_diff_max);
- the actor's weights changed: the step-2 responses' log-probs under the *initial* model differ from
  the old log-probs verl computed with the synced weights, while at step 1 they agree;
- the advantages the actor received (verl's TransferQueue, dumped through trainer.rollout_data_dir)
  equal pi_hat = (sum of the logged similarities + alpha * pi_bar) / (N + alpha), with pi_bar from verl's
  rollout log-probs, on exactly the audited tokens and 0 elsewhere;
- audit/* and teacher/* in verl's console `step:N - ...` lines, equal to the same sums over the dump;
- a failing teacher: on_failure=drop counts the dropped anchors in the step metrics; on_failure=error
  stops the run with a message naming the teacher and the cause.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omniopd_verl.testing import Fault, ScriptedGenerator, serve_fault_server
from omniopd_verl.testing.ledger_workers import open_paths
from omniopd_verl.verl_integration.cpu.smoke import cpu_env, prepare, step_metrics_from_log

REPO = Path(__file__).resolve().parents[2]
ALPHA, N, C, M = 1.0, 2, 4, 2
SIZES = [
    "data.train_batch_size=2",
    "data.max_prompt_length=64",
    "data.max_response_length=16",
    "data.dataloader_num_workers=0",
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=1024",
    "actor_rollout_ref.rollout.n=2",
    "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=1024",
    "trainer.total_training_steps=2",
    "trainer.val_before_train=false",
    "trainer.test_freq=-1",
    "trainer.save_freq=-1",
    "trainer.logger=[console]",
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    model, data = prepare(tmp_path_factory.mktemp("verl_cpu"))
    return {"model": model, "data": data}


def main_ppo(args: list[str], out_dir: Path, timeout: int = 600, entry=("-m", "verl.trainer.main_ppo"), env=None):
    cmd = [sys.executable, *entry, *args, f"trainer.default_local_dir={out_dir / 'ckpt'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env or cpu_env(), capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def omniopd_args(smoke, api_base: str, dump: Path, *extra: str) -> list[str]:
    return [
        f"--config-path={REPO / 'omniopd_verl' / 'config'}",
        "--config-name=omniopd_fsdp",
        "+omniopd_platform=cpu",
        f"data.train_files={smoke['data']}",
        f"data.val_files={smoke['data']}",
        f"actor_rollout_ref.model.path={smoke['model']}",
        "actor_rollout_ref.actor.optim.lr=1e-3",  # large enough that 1 step visibly moves the weights
        *SIZES,
        f"omniopd.chunks={M}",
        f"omniopd.samples={N}",
        f"omniopd.chunk_len={C}",
        f"omniopd.alpha={ALPHA}",
        "omniopd.rollout_topk=5",
        "omniopd.similarity=ned",
        "omniopd.teacher.name=openai_completions",
        "omniopd.teacher.model=local-teacher",
        f"omniopd.teacher.api_base={api_base}",
        "omniopd.teacher.timeout_s=20",
        f"trainer.rollout_data_dir={dump}",
        *extra,
    ]


def read_dump(dump: Path, step: int) -> list[dict]:
    return [json.loads(line) for line in (dump / f"omniopd_step{step}.jsonl").read_text().splitlines()]


def expected_advantages(row: dict) -> list[float]:
    """pi_hat on each logged chunk's tokens, 0 elsewhere, from the logged similarities and verl's rollout log-probs."""
    audit = json.loads(row["reward_extra_info"]["omniopd_audit"])
    lp = row["rollout_log_probs"]
    adv = [0.0] * len(row["responses"])
    for chunk in audit["chunks"]:
        start, end = chunk["start"], chunk["end"]
        k_sem = sum(chunk["similarities"])
        pi_bar = math.exp(sum(lp[start:end]) / (end - start))
        pi_hat = (k_sem + ALPHA * pi_bar) / (N + ALPHA)
        for t in range(start, end):
            adv[t] = pi_hat
    return adv


@torch.no_grad()
def logprobs_under(model_path: str, prompt: list[int], response: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="eager").eval()
    ids = torch.tensor([prompt + response])
    lp = torch.log_softmax(model(ids).logits[0].float(), -1)
    P = len(prompt)
    return torch.stack([lp[P - 1 + t, tok] for t, tok in enumerate(response)])


def test_grpo_baseline_recipe_runs_two_steps_with_the_cpu_overlay(smoke, tmp_path):
    """verl's GRPO (the baseline_grpo recipe's algorithm) + the CPU overlay, hf rollout: exit 0, 2 steps."""
    rc, log = main_ppo(
        [
            f"--config-path={REPO / 'recipes' / 'baseline_grpo'}",
            "--config-name=baseline_grpo",
            "hydra.searchpath=[pkg://verl.trainer.config,pkg://omniopd_verl.config]",
            "+omniopd_platform=cpu",
            f"data.train_files={smoke['data']}",
            f"data.val_files={smoke['data']}",
            f"actor_rollout_ref.model.path={smoke['model']}",
            "actor_rollout_ref.model.enable_gradient_checkpointing=false",
            "actor_rollout_ref.actor.ppo_mini_batch_size=2",
            "actor_rollout_ref.ref.fsdp_config.param_offload=false",
            *SIZES,
        ],
        tmp_path,
    )
    steps = step_metrics_from_log(log)
    assert rc == 0 and 2 in steps, log[-4000:]
    for metrics in steps.values():
        assert metrics["training/rollout_probs_diff_max"] < 1e-4
        assert "audit/pi_hat_mean" not in metrics  # no OmniOPD rows in a GRPO run


def test_omniopd_train_cli_runs_the_cpu_smoke_recipe_and_trains_on_pi_hat(smoke, tmp_path):
    """`omniopd-verl train --config recipes/verl_cpu_smoke/verl_cpu_smoke.yaml` on this GPU-less machine:
    CPU mode (the recipe lists the overlay), main_ppo, the HTTP teacher on 127.0.0.1."""
    dump = tmp_path / "dump"
    folder = Path(smoke["model"]).parent
    with serve_fault_server(generator=ScriptedGenerator()) as server:
        env = dict(os.environ, SMOKE_DIR=str(folder), TEACHER_PORT=server.url.rsplit(":", 1)[1].split("/")[0])
        env.pop("VERL_PLATFORM", None)  # the CLI sets it itself in CPU mode
        rc, log = main_ppo(
            [
                "train",
                "--config",
                str(REPO / "recipes" / "verl_cpu_smoke" / "verl_cpu_smoke.yaml"),
                f"trainer.rollout_data_dir={dump}",
            ],
            tmp_path,
            entry=("-m", "omniopd_verl.cli.main"),
            env=env,
        )
        teacher_calls = server.calls("/v1/completions")
    assert "CPU mode" in log  # the CLI said what CPU mode is for
    steps = step_metrics_from_log(log)
    assert rc == 0 and 2 in steps, log[-4000:]

    for step in (1, 2):
        metrics, rows = steps[step], read_dump(dump, step)
        assert len(rows) == 4  # 2 prompts x n=2
        assert metrics["training/rollout_probs_diff_max"] < 1e-4
        chunks = pi_hat_sum = audited = tokens = 0
        for row in rows:
            expected = expected_advantages(row)
            assert row["advantages"] == pytest.approx(expected, abs=1e-5), row["key"]
            audit = json.loads(row["reward_extra_info"]["omniopd_audit"])
            chunks += len(audit["chunks"])
            pi_hat_sum += sum(c["pi_hat"] for c in audit["chunks"])
            audited += sum(c["end"] - c["start"] for c in audit["chunks"])
            tokens += len(row["responses"])
        # verl's step metrics carry the audit and the teacher accounting
        assert metrics["audit/chunks"] == chunks > 0
        assert metrics["audit/pi_hat_mean"] == pytest.approx(pi_hat_sum / chunks, rel=1e-6)
        assert metrics["audit/token_fraction"] == pytest.approx(audited / tokens, rel=1e-6)
        assert metrics["teacher/requests"] == chunks  # one request per anchor (one /v1/completions call, n = N)
        assert metrics["audit/anchors_dropped"] == 0 and metrics["teacher/failures"] == 0
        for key in ("audit/k_sem_frac_mean", "audit/pi_bar_mean", "teacher/retries", "teacher/seconds"):
            assert key in metrics, key
    assert teacher_calls == steps[1]["teacher/requests"] + steps[2]["teacher/requests"]

    # the actor learned and its weights reached the rollout: step 1 was sampled from the initial model,
    # step 2 from the updated one (verl's old log-probs = the synced actor's)
    for step, changed in ((1, False), (2, True)):
        row = read_dump(dump, step)[0]
        initial_lp = logprobs_under(smoke["model"], row["prompts"], row["responses"])
        diff = (initial_lp - torch.tensor(row["old_log_probs"])).abs().max().item()
        assert (diff > 1e-3) if changed else (diff < 1e-4), (step, diff)


def test_omniopd_teacher_failures_dropped_are_counted_in_step_metrics(smoke, tmp_path):
    faults = [Fault("server_error", times=3)]
    with serve_fault_server(generator=ScriptedGenerator(), faults=faults) as server:
        rc, log = main_ppo(
            omniopd_args(
                smoke, server.url, tmp_path / "dump", "omniopd.teacher.on_failure=drop", "omniopd.teacher.max_retries=0"
            ),
            tmp_path,
        )
    steps = step_metrics_from_log(log)
    assert rc == 0 and 2 in steps, log[-4000:]
    dropped = sum(steps[s]["audit/anchors_dropped"] for s in (1, 2))
    failures = sum(steps[s]["teacher/failures"] for s in (1, 2))
    assert dropped == failures == 3


@pytest.mark.slow
def test_omniopd_teacher_failure_with_on_failure_error_stops_naming_teacher_and_cause(smoke, tmp_path):
    faults = [Fault("server_error", times=1000)]
    with serve_fault_server(generator=ScriptedGenerator(), faults=faults) as server:
        rc, log = main_ppo(
            omniopd_args(
                smoke,
                server.url,
                tmp_path / "dump",
                "omniopd.teacher.on_failure=error",
                "omniopd.teacher.max_retries=0",
            ),
            tmp_path,
        )
    assert rc != 0
    assert "teacher 'openai_completions' failed" in log, log[-4000:]
    assert "500" in log
    assert "step:1 -" not in log


@pytest.mark.slow
def test_centered_batch_advantages_subtract_the_batch_mean_over_audited_tokens(smoke, tmp_path):
    dump = tmp_path / "dump"
    with serve_fault_server(generator=ScriptedGenerator()) as server:
        rc, log = main_ppo(omniopd_args(smoke, server.url, dump, "omniopd.advantage=centered_batch"), tmp_path)
    steps = step_metrics_from_log(log)
    assert rc == 0 and 2 in steps, log[-4000:]
    for step in (1, 2):
        rows = read_dump(dump, step)
        posterior = [expected_advantages(row) for row in rows]
        audited = [
            [
                any(c["start"] <= t < c["end"] for c in json.loads(row["reward_extra_info"]["omniopd_audit"])["chunks"])
                for t in range(len(row["responses"]))
            ]
            for row in rows
        ]
        values = [a for adv, mask in zip(posterior, audited, strict=True) for a, m in zip(adv, mask, strict=True) if m]
        batch_mean = sum(values) / len(values)
        for row, adv, mask in zip(rows, posterior, audited, strict=True):
            expected = [a - batch_mean if m else 0.0 for a, m in zip(adv, mask, strict=True)]
            assert row["advantages"] == pytest.approx(expected, abs=1e-5), row["key"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["omniopd", "grpo"])
def test_cpu_smoke_recipe_run_sh(tmp_path, variant):
    """recipes/verl_cpu_smoke/run.sh: starts the CPU teacher server (omniopd), trains 2 steps, stops it,
    exits 0 after verl's step:2 line (with the OmniOPD metrics for omniopd)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, SMOKE_DIR=str(tmp_path / "smoke"), TEACHER_PORT=str(port))
    argv = [str(REPO / "recipes" / "verl_cpu_smoke" / "run.sh"), *(["grpo"] if variant == "grpo" else [])]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    step2 = step_metrics_from_log(out)[2]
    if variant == "omniopd":
        assert step2["audit/chunks"] > 0 and step2["teacher/requests"] == step2["audit/chunks"]
        assert "step 2 reached" in out
    else:
        assert "audit/chunks" not in step2


@pytest.mark.slow
def test_omniopd_with_the_topk_ref_kl_anchor_runs_two_steps(smoke, tmp_path):
    """omniopd.kl_anchor=topk_ref through main_ppo on CPU: the reference served by the hf rollout as the
    distillation "teacher" in its own pool, the masked top-k KL in the actor's loss, 2 steps."""
    dump = tmp_path / "dump"
    with serve_fault_server(generator=ScriptedGenerator()) as server:
        rc, log = main_ppo(
            omniopd_args(
                smoke,
                server.url,
                dump,
                "+omniopd_kl_anchor=topk_ref",
                "omniopd.kl_topk=8",
                "ray_kwargs.ray_init.num_gpus=2",  # + the teacher pool (what `omniopd-verl train --cpu` adds)
                "ray_kwargs.ray_init.num_cpus=4",
            ),
            tmp_path,
            timeout=600,
        )
    steps = step_metrics_from_log(log)
    assert rc == 0 and 2 in steps, log[-4000:]
    for step in (1, 2):
        metrics, rows = steps[step], read_dump(dump, step)
        assert metrics["training/rollout_probs_diff_max"] < 1e-4
        assert "actor/kl_loss" not in metrics  # verl's k3 KL loss is off: the anchor is the distillation loss
        assert metrics["actor/distillation/loss"] >= 0
        audited = tokens = 0
        for row in rows:
            audit = json.loads(row["reward_extra_info"]["omniopd_audit"])
            audited += sum(c["end"] - c["start"] for c in audit["chunks"])
            tokens += len(row["responses"])
            assert row["advantages"] == pytest.approx(expected_advantages(row), abs=1e-5), row["key"]
        assert 0 < audited < tokens
        # the loss saw the audit mask: its unaudited fraction is 1 - the audited fraction from the dump
        assert metrics["actor/kl_anchor/unaudited_token_fraction"] == pytest.approx(1 - audited / tokens, abs=1e-6)
    # step 1: the student is the reference (KL ~ 0); step 2: it moved away after one update
    kl1, kl2 = steps[1]["actor/distillation/loss"], steps[2]["actor/distillation/loss"]
    assert kl1 < 1e-4 < kl2, (kl1, kl2)


PRICE_IN, PRICE_OUT = 0.001, 0.002
PRICED = [
    f"+omniopd.teacher.options.input_cost_per_token={PRICE_IN}",
    f"+omniopd.teacher.options.output_cost_per_token={PRICE_OUT}",
]


def served_usd(server) -> float:
    """What the teacher server's answers cost at the price table, from its request log (usage = words)."""
    total = 0.0
    for record in server.requests:
        if record.path == "/v1/completions" and record.status == 200:
            completion_words = record.body["n"] * max(1, min(8, record.body["max_tokens"]))  # ScriptedGenerator
            total += len(record.body["prompt"].split()) * PRICE_IN + completion_words * PRICE_OUT
    return total


def test_run_wide_budget_stops_main_ppo_once_within_the_first_step(smoke, tmp_path):
    """3 reward workers, one budget: a spent budget stops verl within the step, with one message and a
    non-zero exit (verl's agent loop used to retry the prompt forever); the spend stays within the budget;
    the cache file is opened by the ledger alone (rollback journal: no worker ever opened it in WAL mode)."""
    budget = 0.25
    cache = tmp_path / "teacher_cache.sqlite"
    with serve_fault_server(generator=ScriptedGenerator()) as server:
        rc, log = main_ppo(
            omniopd_args(
                smoke,
                server.url,
                tmp_path / "dump",
                "reward.num_workers=3",
                f"omniopd.teacher.max_cost_usd={budget}",
                f"omniopd.teacher.cache_path={cache}",
                *PRICED,
            ),
            tmp_path,
        )
        served = served_usd(server)
        answered = sum(r.path == "/v1/completions" and r.status == 200 for r in server.requests)
    print(f"budget ${budget}: served ${served:.6f} in {answered} answers")
    assert rc != 0, log[-4000:]
    assert "OmniOPD teacher ledger: run id" in log  # the driver created the run's ledger
    assert "step:1 -" not in log  # stopped inside the first step, before its update
    # no endless retry loop: verl's agent loop used to retry the stopped prompts forever (3,132 such lines in
    # 14 min, and the run never ended). Now the run ends (rc != 0 above), but prompts in flight until the driver
    # has torn the workers down still fail and are retried, each failure logged by verl's `_run_prompt`
    # (v1/agent_loop_tq.py): how many depends on how long the teardown takes (0 to 56 seen on this project's
    # 2-core machine), not on our code; 400 is about 2 minutes of the old loop.
    assert log.count("Error in _run_prompt") <= 400, [line for line in log.splitlines() if "_run_prompt" in line][-8:]
    assert log.count("OmniOPD stops the run: teacher budget") == 1, log[-4000:]  # once, not per trajectory
    assert "TeacherStopError: OmniOPD stopped the run: teacher budget" in log, log[-6000:]
    assert served <= budget + 1e-12, served  # one budget for the 3 workers
    import sqlite3

    db = sqlite3.connect(cache)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert db.execute("SELECT COUNT(*) FROM teacher_cache").fetchone()[0] == answered  # every paid answer kept
    db.close()
    assert not (tmp_path / "teacher_cache.sqlite-wal").exists()


@pytest.mark.slow
def test_validation_gets_no_teacher_calls_and_the_rpm_holds_run_wide(smoke, tmp_path):
    """val_before_train + test_freq=1: validation batches make 0 teacher calls (the ledger counts every call,
    the step metrics only training ones); requests_per_minute holds for the 3 workers together."""
    rpm = 8
    with serve_fault_server(generator=ScriptedGenerator()) as server:
        rc, log = main_ppo(
            omniopd_args(
                smoke,
                server.url,
                tmp_path / "dump",
                "reward.num_workers=3",
                f"omniopd.teacher.requests_per_minute={rpm}",
                "trainer.val_before_train=true",
                "trainer.test_freq=1",
            ),
            tmp_path,
            timeout=900,
        )
        arrivals = sorted(r.time for r in server.requests if r.path == "/v1/completions")
    steps = step_metrics_from_log(log)
    assert rc == 0 and 2 in steps, log[-4000:]
    training_calls = steps[1]["teacher/requests"] + steps[2]["teacher/requests"]
    busiest = max(sum(1 for u in arrivals if t <= u < t + 59.0) for t in arrivals)
    print(
        f"rpm {rpm}: {len(arrivals)} calls, at most {busiest} in a 59 s window; ledger {steps[2]['teacher_run/calls']}"
    )
    assert steps[2]["teacher_run/calls"] == training_calls == len(arrivals) > rpm
    assert max(sum(1 for u in arrivals if t <= u < t + 59.0) for t in arrivals) <= rpm, arrivals


@pytest.mark.slow
def test_a_teacher_failing_every_call_stops_the_run_even_with_on_failure_drop(smoke, tmp_path):
    faults = [Fault("bad_request", times=10_000, message="The model `local-teacher-typo` does not exist")]
    with serve_fault_server(generator=ScriptedGenerator(), faults=faults) as server:
        rc, log = main_ppo(
            omniopd_args(
                smoke, server.url, tmp_path / "dump", "reward.num_workers=3", "omniopd.teacher.on_failure=drop"
            ),
            tmp_path,
        )
    assert rc != 0
    assert "above omniopd.teacher.max_failure_rate=0.5; the cause seen most" in log, log[-4000:]
    assert "The model `local-teacher-typo` does not exist" in log
    assert "step:2 -" not in log


@pytest.mark.slow
def test_a_resumed_run_continues_the_teacher_spend(smoke, tmp_path):
    """Step 1 with a checkpoint, then a resume to step 2: the ledger starts from the first run's spend."""
    with serve_fault_server(generator=ScriptedGenerator()) as server:
        common = [*PRICED, "omniopd.teacher.max_cost_usd=100", "trainer.save_freq=1"]
        rc1, log1 = main_ppo(
            omniopd_args(smoke, server.url, tmp_path / "dump", *common, "trainer.total_training_steps=1"), tmp_path
        )
        first = step_metrics_from_log(log1)
        rc2, log2 = main_ppo(
            omniopd_args(smoke, server.url, tmp_path / "dump", *common, "trainer.total_training_steps=2"), tmp_path
        )
        served = served_usd(server)
    second = step_metrics_from_log(log2)
    assert rc1 == 0 and rc2 == 0 and 1 in first and 2 in second and 1 not in second, log2[-4000:]
    spent_1 = first[1]["teacher_run/spent_usd"]
    assert spent_1 > 0
    assert f"${spent_1:.6f} spent so far of max_cost_usd=$100" in log2  # the resume started from it
    assert second[2]["teacher_run/spent_usd"] == pytest.approx(served, rel=1e-6)  # both runs' calls, one budget


ONE_TOKEN_WORDS = (" the", " a", " and", " of", " to", " in", " is", " it")  # one SmolLM2 token each, also in a row


def token_billing_server(model_path: str):
    """The fault server billing like a provider: its usage counts SmolLM2 tokens (the student's tokenizer),
    and every answer is exactly max_tokens tokens long (one-token words), as an honest full-length answer."""
    import hashlib

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def answer(call) -> list[str]:
        texts = []
        for i in range(call.n):
            digest = hashlib.sha256(f"{call.prompt}\x00{call.seed}\x00{i}".encode()).digest()
            texts.append("".join(ONE_TOKEN_WORDS[digest[j] % len(ONE_TOKEN_WORDS)] for j in range(call.max_tokens)))
        return texts

    return serve_fault_server(generator=ScriptedGenerator(fn=answer), count_tokens=count), count


class OpenersOf:
    """Polls every process under `root_pid` (the trainer's whole Ray cluster: gcs, raylet, every worker)
    for open file descriptors on `path` (and its -journal/-wal/-shm files); `seen` maps pid -> title."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.seen: dict[int, str] = {}
        self.sweeps = 0
        self.root_pid: int | None = None
        self._stop = False

    def poll(self) -> None:
        import time

        while not self._stop:
            if self.root_pid is not None:
                for pid in descendants(self.root_pid):
                    if any(target.startswith(self.path) for target in open_paths(pid)):
                        try:
                            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                        except OSError:
                            title = "?"
                        self.seen.setdefault(pid, title)
                self.sweeps += 1
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop = True


def forecast_from_dry_run(log: str) -> dict[str, float]:
    import re

    requests, inp, out = map(
        int, re.search(r"forecast: (\d+) requests per step .*?, (\d+) input \+ (\d+) output", log).groups()
    )
    usd_step, usd_run, steps = re.search(r"forecast: \$([\d.]+) per step, \$([\d.]+) for (\d+) steps", log).groups()
    n = int(steps)
    return {"calls": requests * n, "prompt_tokens": inp * n, "completion_tokens": out * n, "usd": float(usd_run)}


@pytest.mark.slow
def test_three_reward_workers_one_cache_writer_and_the_forecast_holds_against_the_ledger(smoke, tmp_path):
    """`omniopd-verl train` on the CPU smoke recipe with reward.num_workers=3, a priced teacher billing
    tokens and a cache file: the cache file is opened by one process of the whole Ray cluster (the ledger's),
    every paid answer is in it; the money the server's answers cost is what the ledger counts; and the
    `--dry-run` forecast of requests, tokens and $ is within +-25% of that spend.

    Why the +-25% holds by construction here (not by luck): requests = 4 trajectories x min(M=2, T // C)
    per step, equal to the forecast's when every response has >= M*C = 8 of its 16 tokens (checked from
    the dump below); output tokens = n x ceil(C x 1.25) = 10 per call exactly (the server fills max_tokens
    with one-token words); input tokens per call = the prompt (the forecast measures the data's prompts
    with the same tokenizer and chat template) + the response prefix before the anchor, which lies in
    [0, T - C] = [0, 12] student tokens where the forecast takes 6: at most 6 tokens off a ~52-token call
    (<= 12%), plus what re-tokenizing the decoded prefix adds or removes (measured, reported on failure)."""
    import sqlite3
    import threading

    folder = Path(smoke["model"]).parent
    cache = tmp_path / "teacher_cache.sqlite"
    dump = tmp_path / "dump"
    server_cm, count = token_billing_server(smoke["model"])
    overrides = [
        "reward.num_workers=3",
        f"omniopd.teacher.cache_path={cache}",
        "omniopd.teacher.max_cost_usd=100",
        f"trainer.default_local_dir={tmp_path / 'ckpt'}",
        *PRICED,
    ]
    cli = [sys.executable, "-m", "omniopd_verl.cli.main", "train", "--config"]
    recipe = str(REPO / "recipes" / "verl_cpu_smoke" / "verl_cpu_smoke.yaml")
    with server_cm as server:
        env = cpu_env(dict(os.environ, SMOKE_DIR=str(folder), TEACHER_PORT=server.url.rsplit(":", 1)[1].split("/")[0]))
        env.pop("VERL_PLATFORM", None)  # the CLI sets it itself in CPU mode
        dry = subprocess.run(
            [*cli, recipe, "--dry-run", *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )
        assert dry.returncode == 0, (dry.stdout + dry.stderr)[-4000:]
        assert server.requests == []  # a dry run pays nothing
        forecast = forecast_from_dry_run(dry.stdout + dry.stderr)

        openers = OpenersOf(cache)
        poller = threading.Thread(target=openers.poll, daemon=True)
        poller.start()
        proc = subprocess.Popen(
            [*cli, recipe, f"trainer.rollout_data_dir={dump}", *overrides],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        openers.root_pid = proc.pid
        try:
            log, _ = proc.communicate(timeout=600)
        finally:
            openers.stop()
            if proc.poll() is None:
                proc.kill()
        poller.join(timeout=10)
        answered = [r for r in server.requests if r.path == "/v1/completions" and r.status == 200]
        served_prompt = sum(count(r.body["prompt"]) for r in answered)
        served_completion = sum(r.body["n"] * r.body["max_tokens"] for r in answered)
    steps = step_metrics_from_log(log)
    assert proc.returncode == 0 and 2 in steps, log[-4000:]
    run = steps[2]  # teacher_run/*: the ledger's totals over both steps and all 3 workers

    # one writer: of every process of the run, only the ledger's ever held the cache file open
    assert openers.sweeps > 10, openers.sweeps
    assert len(openers.seen) == 1 and "LedgerActor" in next(iter(openers.seen.values())), openers.seen
    db = sqlite3.connect(cache)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert db.execute("SELECT COUNT(*) FROM teacher_cache").fetchone()[0] == len(answered) > 0
    db.close()

    # the ledger counted what the server billed (its usage = SmolLM2 tokens)
    served_usd = served_prompt * PRICE_IN + served_completion * PRICE_OUT
    assert run["teacher_run/calls"] == len(answered) == steps[1]["teacher/requests"] + steps[2]["teacher/requests"]
    assert run["teacher_run/prompt_tokens"] == served_prompt
    assert run["teacher_run/completion_tokens"] == served_completion
    assert run["teacher_run/spent_usd"] == pytest.approx(served_usd, rel=1e-9)

    # the forecast against the real spend
    lengths = [len(row["responses"]) for s in (1, 2) for row in read_dump(dump, s)]
    real = {
        "calls": run["teacher_run/calls"],
        "prompt_tokens": run["teacher_run/prompt_tokens"],
        "completion_tokens": run["teacher_run/completion_tokens"],
        "usd": run["teacher_run/spent_usd"],
    }
    table = {k: (forecast[k], real[k], real[k] / forecast[k]) for k in forecast}
    print("forecast vs ledger (forecast, real, real/forecast):", table, "response lengths:", lengths)
    if min(lengths) >= 2 * 4:  # every response long enough for M=2 anchors of C=4 (see the docstring)
        assert real["calls"] == forecast["calls"], table
        assert real["completion_tokens"] == forecast["completion_tokens"], table
    for key, (_, _, ratio) in table.items():
        assert 0.75 <= ratio <= 1.25, (key, table, lengths)


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pid_of_client(client_port: int, pids: list[int]) -> int | None:
    """Which of `pids` owns the TCP socket whose local port is `client_port` (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == client_port:
                inodes.add(fields[9])
    for pid in pids:
        if any(target.startswith("socket:[") and target[8:-1] in inodes for target in open_paths(pid)):
            return pid
    return None


@pytest.mark.slow
def test_a_reward_worker_killed_mid_call_loses_no_settled_answer_and_the_budget_holds(smoke, tmp_path):
    """One of 3 reward workers is SIGKILLed (what ray.kill does to an actor's process) while the server holds
    one of its teacher calls (1 s latency; the request's client port names the process), once at least 4 answers
    were served, so that some are settled before the kill. Whatever verl then does with the
    run, the run's ledger keeps: every answer it settled is in the cache, and an answer is missing from the
    cache only if its call was never settled (its worker died mid-call), which the spend file still holds
    as a reservation at its worst case (a resume charges it) or has charged on expiry; the money served
    stays <= max_cost_usd; the spend file counts every served answer."""
    import signal
    import sqlite3
    import time

    budget = 0.6  # about 1.3 steps of this recipe's calls (~$0.057 each): the budget stops the run in step 2
    cache = tmp_path / "teacher_cache.sqlite"
    args = omniopd_args(
        smoke,
        "URL",
        tmp_path / "dump",
        "reward.num_workers=3",
        f"omniopd.teacher.max_cost_usd={budget}",
        f"omniopd.teacher.cache_path={cache}",
        *PRICED,
    )
    with serve_fault_server(generator=ScriptedGenerator(), latency_s=1.0) as server:
        args = [a.replace("URL", server.url) for a in args]
        cmd = [sys.executable, "-m", "verl.trainer.main_ppo", *args, f"trainer.default_local_dir={tmp_path / 'ckpt'}"]
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        victim, held, deadline = None, 0, time.monotonic() + 400
        callers: set[str] = set()  # which processes held open teacher calls (reported if no victim is found)
        open_seen = 0
        try:
            while victim is None and proc.poll() is None and time.monotonic() < deadline:
                # a request the server has not answered yet (it holds each for 1 s): the reward worker behind it
                seen = [r for r in list(server.requests) if r.path == "/v1/completions"]
                if sum(r.status == 200 for r in seen) < 4:  # first let some answers settle, so there are some to keep
                    time.sleep(0.05)
                    continue
                open_ports = [r.client[1] for r in seen if not r.status]
                open_seen += len(open_ports)
                everyone = [int(e) for e in os.listdir("/proc") if e.isdigit()]
                owners = [pid_of_client(p, everyone) for p in open_ports]
                under = set(descendants(proc.pid))
                callers.update(f"{title(pid)[:60]} (under the run: {pid in under})" for pid in owners if pid)
                mine = [pid for pid in owners if pid in under and "ray::RewardLoopWorker" in title(pid)]
                if mine:
                    victim = mine[0]
                    held = mine.count(victim)
                    os.kill(victim, signal.SIGKILL)
                    break
                time.sleep(0.05)
            log, _ = proc.communicate(timeout=420)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        answered = sum(r.path == "/v1/completions" and r.status == 200 for r in server.requests)
        served = served_usd(server)
    assert victim is not None, (open_seen, callers, log[-4000:])  # killed while its calls were open
    assert answered >= 4
    [state_file] = (tmp_path / "ckpt" / "omniopd_teacher_ledger").glob("*.json")
    state = json.loads(state_file.read_text())
    reserved = sum(r["worst_usd"] for r in state["reservations"].values())
    db = sqlite3.connect(cache)
    stored = db.execute("SELECT COUNT(*) FROM teacher_cache").fetchone()[0]
    db.close()
    unsettled = len(state["reservations"]) + state["metrics"]["teacher_run/expired_reservations"]
    report = dict(rc=proc.returncode, held=held, answered=answered, stored=stored, unsettled=unsettled, served=served)
    print("killed reward worker:", report, "ledger state:", state, "log tail:", log[-3000:])
    assert served <= budget + 1e-12, report  # the budget holds with a worker gone
    assert state["spent_usd"] + reserved >= served - 1e-9, report  # every served answer is counted
    assert state["metrics"]["teacher_run/failures"] == 0, report
    assert stored == state["metrics"]["teacher_run/calls"], report  # every settled answer is stored
    assert unsettled >= held, report  # the victim's open calls were never settled: reserved (or expired)
    assert answered - unsettled <= stored <= answered, report  # unstored only if never settled


def trajectory_rows(dump: Path) -> list[tuple[tuple, dict]]:
    """Per dumped trajectory of steps 1-2: (prompt ids, response ids within the mask) and its row counts."""
    out = []
    for step in (1, 2):
        for row in read_dump(dump, step):
            response = tuple(t for t, m in zip(row["responses"], row["response_mask"], strict=True) if m)
            info = row["reward_extra_info"]
            counts = {k: info[f"omniopd_row/teacher/{k}"] for k in ("requests", "cache_hits")}
            out.append(((tuple(row["prompts"]), response), counts))
    return out


@pytest.mark.slow
def test_a_deterministic_rerun_asks_the_teacher_only_about_trajectories_it_has_not_seen(smoke, tmp_path):
    """Two main_ppo runs with `actor_rollout_ref.rollout.full_determinism=true` (verl names each rollout
    request det-<priority>, and the hf rollout seeds its sampling from that name) and one teacher cache.
    The audit keys a trajectory's anchors and teacher seeds on its tokens (reward_manager.trajectory_seed_key),
    not on verl's per-run uuid4 uid, so every trajectory the rerun shares with the first run is answered
    from the cache (each of its requests a cache hit), and the rerun's HTTP calls are at most the requests
    of the trajectories that are new. Checked from the two runs' dumps, not assumed: how many trajectories
    repeat is printed (on this CPU, with the same weights, seeds and batch, all of them: the rerun is free)."""
    with serve_fault_server(generator=ScriptedGenerator()) as server:
        common = [
            "actor_rollout_ref.rollout.full_determinism=true",
            f"omniopd.teacher.cache_path={tmp_path / 'teacher_cache.sqlite'}",
        ]
        rc1, log1 = main_ppo(omniopd_args(smoke, server.url, tmp_path / "dump1", *common), tmp_path / "run1")
        first_calls = sum(r.path == "/v1/completions" for r in server.requests)
        rc2, log2 = main_ppo(omniopd_args(smoke, server.url, tmp_path / "dump2", *common), tmp_path / "run2")
        rerun_calls = sum(r.path == "/v1/completions" for r in server.requests) - first_calls
    assert rc1 == 0 and 2 in step_metrics_from_log(log1), log1[-4000:]
    assert rc2 == 0 and 2 in step_metrics_from_log(log2), log2[-4000:]
    seen = {key for key, _ in trajectory_rows(tmp_path / "dump1")}
    rerun = trajectory_rows(tmp_path / "dump2")
    repeated = [counts for key, counts in rerun if key in seen]
    new = [counts for key, counts in rerun if key not in seen]
    print(
        f"first run {first_calls} calls; rerun {rerun_calls} calls; {len(repeated)} of {len(rerun)} trajectories repeated"
    )
    assert first_calls > 0 and repeated, (first_calls, len(repeated))  # otherwise nothing was checked
    assert sum(c["requests"] for c in repeated) > 0 and all(c["cache_hits"] == c["requests"] for c in repeated)
    assert rerun_calls <= sum(c["requests"] for c in new), (rerun_calls, new)  # 0 when every trajectory repeats
