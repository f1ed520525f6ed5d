"""The demo's table and the prepared GPU script (run at its --tiny CPU shape, so it is known to work)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_demo_table_has_one_row_per_step_and_marks_missing_values():
    from omniopd_verl.demo import format_eval, format_table

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
    text = format_eval(
        {
            "before": {"prompts": 8, "k_sem_frac_mean": 0.30, "chunks": 16},
            "after": {"prompts": 8, "k_sem_frac_mean": 0.35, "chunks": 16},
        }
    )
    assert "8 held-out" in text
    assert "0.3000" in text and "0.3500" in text and "+0.0500" in text
    assert "not configured" in format_eval({})


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
