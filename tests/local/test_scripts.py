"""The demo's table and the prepared GPU script (run at its --tiny CPU shape, so it is known to work)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_demo_table_has_one_row_per_step_and_marks_missing_values():
    from omniopd_verl.demo.quickstart import format_table

    rows = [
        {
            "step": 1,
            "audit/pi_hat_mean": 0.25,
            "audit/k_sem_frac_mean": 0.5,
            "audit/token_fraction": 0.125,
            "loss/l_chunk": 3.0,
            "loss/l_kl": 0.0,
            "teacher/calls": 16.0,
            "teacher/cache_hits": 0.0,
            "time/step": 12.5,
        },
        {"step": 2, "loss/l_chunk": 2.5, "loss/l_kl": 0.01, "teacher/calls": 16.0, "time/step": 11.0},
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == [
        "step",
        "pi_hat",
        "k_sem/N",
        "audited",
        "L_chunk",
        "L_KL",
        "t.calls",
        "t.cache",
        "step",
        "s",
    ]
    assert lines[2].split() == ["1", "0.250", "0.500", "12.5%", "3.000", "0.0000", "16", "0", "12.5"]
    assert lines[3].split()[1] == "n/a" and lines[3].split()[4] == "2.500"
    from omniopd_verl.demo.quickstart import format_result

    r = {"effect": 0.02, "ci95": [0.01, 0.03], "prompts": 40, "prefixes": 80, "before": 0.25, "after": 0.27}
    summary = {"metric": "m", **r, "teacher_mass": 0.5,
               "control": {"effect": 0.0, "ci95": [-0.01, 0.01], "before": 0.25, "after": 0.25},
               "arm_minus_control": {"effect": 0.02, "ci95": [0.005, 0.035]},
               "secondary": {"metric": "g", "omniopd": {"effect": -0.05, "ci95": [-0.08, -0.02]},
                             "control": {"effect": 0.05, "ci95": [0.02, 0.08]}}}  # fmt: skip
    text = format_result(summary)
    assert "+2.00 pts  [+1.00, +3.00]" in text and "arm minus control" in text
    assert "went from 25.00% to 27.00% (+8.0% relative; the teacher itself: 50.00%)" in text
    assert "control: 25.00% to 25.00% (+0.0%)" in text and "Effect shown" in text
    assert "4.9% lower likelihood" in text and "control: 5.1% higher" in text
    summary["ci95"] = [-0.01, 0.03]  # the arm's CI covers 0: not shown, whatever the control did
    assert "NOT shown" in format_result(summary)
    summary["ci95"], summary["control"]["ci95"] = [0.01, 0.03], [0.002, 0.02]
    summary["arm_minus_control"]["ci95"] = [-0.001, 0.03]  # control moved too, and the arms do not separate
    assert "NOT shown" in format_result(summary)


@pytest.mark.parametrize("arms", ["side by side", "one after the other"])
def test_demo_runs_from_an_empty_folder_with_one_seed_for_everything(tmp_path, tiny_model_path, arms):
    """`python -m omniopd_verl.demo --seed 3` in a folder with nothing beside it: the recipe and the GSM8K
    subset come from the package, every seed is 3, and the verdict follows the declared rule. The arms
    train in their own processes (side by side, or one after the other with --sequential), on the held-out
    set the prepare process wrote, and keep no checkpoint."""
    import json
    import os
    import subprocess

    from omniopd_verl.demo.quickstart import effect_shown

    work = tmp_path / "empty"
    work.mkdir()
    tiny = [
        f"local.model={tiny_model_path}",
        f"omniopd.teacher.model={tiny_model_path}",
        "omniopd.similarity=ned",
        "omniopd.samples=2",
        "omniopd.chunk_len=4",
        "local.steps=1",
        "local.prompts_per_step=2",
        "local.responses_per_prompt=2",
        "local.micro_batch_size=2",
        "local.max_new_tokens=12",
        "local.data.heldout_prompts=3",
        "local.seed=7",  # --seed comes after the overrides and wins
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "omniopd_verl.demo", "--seed", "3", "--out", "demo_out",
         *(["--sequential"] if arms == "one after the other" else []), *tiny],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((work / "demo_out" / "summary.json").read_text())
    assert summary["seeds"] == {"local.seed": 3, "omniopd.seed": 3} and summary["seed"] == 3
    arm, ctrl, diff = summary, summary["control"], summary["arm_minus_control"]
    rule = arm["ci95"][0] > 0 and (ctrl["ci95"][0] <= 0 <= ctrl["ci95"][1] or diff["ci95"][0] > 0)
    assert summary["effect_shown"] is rule is effect_shown(arm, ctrl, diff)
    assert summary["seconds"] > 0 and summary["peak_rss_mb"] > 0
    assert summary["prompts"] == 3 and summary["setting"]["steps"] == 1
    assert sorted(p.name for p in work.iterdir()) == ["demo_out"]  # nothing written outside --out
    assert ("Effect shown" in out.stdout) is rule and "total time:" in out.stdout
    assert summary["setting"]["arms"] == arms and summary["setting"]["arm_threads"] == "1"
    # both arms were measured on the one held-out set the prepare process wrote
    heldout = (work / "demo_out" / "heldout_set.jsonl").read_text()
    assert heldout and all(
        (work / "demo_out" / a / "heldout_set.jsonl").read_text() == heldout for a in ("omniopd", "control")
    )
    assert not list((work / "demo_out").rglob("checkpoints"))  # local.save_final=false: no 1.6 GB per arm
    peaks = summary["peak_rss_mb_by_process"]
    together = (
        peaks["omniopd"] + peaks["control"] if arms == "side by side" else max(peaks["omniopd"], peaks["control"])
    )
    assert summary["peak_rss_mb"] == pytest.approx(peaks["demo"] + max(peaks["prepare"], together))


def test_demo_rejects_a_bad_seed_with_one_line(capsys):
    from omniopd_verl.demo.quickstart import main

    with pytest.raises(SystemExit) as err:
        main(["--seed", "x"])
    assert err.value.code == 2 and "--seed: invalid int value: 'x'" in capsys.readouterr().err


def test_signal_quality_script_audits_every_response_of_its_fixed_batches(tiny_model_path, capsys):
    import json
    import math

    module = runpy.run_path(str(ROOT / "scripts" / "demo_signal_quality.py"))
    assert module["pearson"]([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]) == pytest.approx(0.9933992677987828)
    assert math.isnan(module["pearson"]([1.0, 1.0], [0.0, 1.0]))
    tiny = [f"local.model={tiny_model_path}", f"omniopd.teacher.model={tiny_model_path}", "omniopd.similarity=ned",
            "omniopd.samples=2", "omniopd.chunk_len=4", "local.max_new_tokens=12"]  # fmt: skip
    module["main"](tiny)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["overrides"] == tiny and result["chunks"] == 4 * 16 * 2  # 4 batches x 16 responses x M=2
    assert math.isnan(result["corr"]) or -1.0 <= result["corr"] <= 1.0


def test_gpu_timing_script_runs_at_its_tiny_cpu_shape(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["time_local_engine.py", "--tiny"])
    runpy.run_path(str(ROOT / "scripts" / "gpu" / "time_local_engine.py"), run_name="__main__")
    out = capsys.readouterr().out
    for label in (
        "rollout: generate",
        "rollout: score",
        "update: reference",
        "update: fwd+bwd",
        "bare fwd+bwd",
        "ratio",
    ):
        assert label in out
    assert "device: CPU" in out


@pytest.mark.slow
def test_step_breakdown_benchmark_runs_on_the_tiny_model(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_local_step_breakdown.py", "--tiny", "--steps", "1"])
    runpy.run_path(str(ROOT / "benchmarks" / "bench_local_step_breakdown.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "rollout" in out and "audit" in out and "update" in out
