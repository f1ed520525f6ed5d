"""`omniopd-verl eval` end to end: real generation (tiny random Llama / real SmolLM2), real grading,
the JSON report, --save-generations -> `data sft` -> verl's SFT dataset; scoring checked against a
scripted generator whose answers are known, so the expected metrics are computed by hand."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from omniopd_verl.cli.main import main
from omniopd_verl.data import benchmarks
from omniopd_verl.errors import ConfigError
from omniopd_verl.eval.generation import SamplingSpec, TransformersGenerator, make_generator
from omniopd_verl.eval.math_grader import grade
from omniopd_verl.eval.runner import evaluate, format_table


class ScriptedGenerator:
    """Same interface as the real back-ends; answers come from a function of the prompt index."""

    name = "scripted"

    def __init__(self, answers):
        self.answers = answers

    def generate(self, prompts, spec):
        return [self.answers(i, p) for i, p in enumerate(prompts)]


def test_scores_match_hand_computed_metrics(benchmarks_dir):
    gsm = benchmarks.load("gsm8k", benchmarks_dir)[:4]
    # problem 0: 2/2 right, 1: 1/2, 2: 0/2, 3: 1/2 (the right answer written as a float)
    script = {
        0: [f"\\boxed{{{gsm[0].answer}}}", f"so #### {gsm[0].answer}"],
        1: [f"\\boxed{{{gsm[1].answer}}}", "\\boxed{-1}"],
        2: ["no idea", "\\boxed{-7}"],
        3: ["\\boxed{123456}", f"The answer is {gsm[3].answer}.0"],
    }
    he = benchmarks.load("humaneval", benchmarks_dir)[:4]
    full_def = "```python\n" + he[2].extra["prompt"] + he[2].extra["canonical_solution"] + "```"
    code = {
        0: [he[0].extra["canonical_solution"], "    return None\n"],  # right, wrong
        1: ["    while True: pass\n"] * 2,  # both time out
        2: [full_def, full_def],  # both right (a full fenced definition)
        3: ["    x = bytearray(8 * 1024 ** 3)\n", "    return None\n"],  # memory bomb, wrong
    }

    def answers(i, prompt):
        return code[i] if "Python function" in prompt[-1]["content"] else script[i]

    spec = SamplingSpec(n=2, temperature=1.0)
    report = evaluate(
        ScriptedGenerator(answers),
        ["gsm8k", "humaneval"],
        spec,
        ks=(1, 2),
        limit=4,
        benchmarks_dir=benchmarks_dir,
        code_timeout_s=3,
    )
    g = report["benchmarks"]["gsm8k"]
    assert g["n_problems"] == 4
    assert g["avg@2"] == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    assert g["pass@1"] == pytest.approx(g["avg@2"])
    assert g["pass@2"] == pytest.approx(3 / 4)
    h = report["benchmarks"]["humaneval"]
    assert h["n_problems"] == 4
    assert h["pass@1"] == pytest.approx((0.5 + 0 + 1 + 0) / 4) and h["pass@2"] == pytest.approx(2 / 4)
    table = format_table(report)
    assert "| gsm8k | 4 | 50.0 | 75.0 | 50.0 |" in table


def test_eval_cli_runs_generation_grading_and_feeds_seqkd(tiny_model_path, benchmarks_dir, tmp_path, capsys):
    out, gens = tmp_path / "report.json", tmp_path / "gens.jsonl"
    rc = main(
        [
            "eval",
            "--model",
            tiny_model_path,
            "--benchmarks",
            "gsm8k,humaneval",
            "--limit",
            "2",
            "--benchmarks-dir",
            str(benchmarks_dir),
            "--max-new-tokens",
            "8",
            "--n",
            "2",
            "--temperature",
            "1.0",
            "--pass-k",
            "1,2",
            "--cpu-threads",
            "1",
            "--batch-size",
            "2",
            "--output",
            str(out),
            "--save-generations",
            str(gens),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| benchmark | problems | pass@1 | pass@2 | avg@2 |" in printed
    report = json.loads(out.read_text())
    assert set(report["benchmarks"]) == {"gsm8k", "humaneval"}
    for m in report["benchmarks"].values():
        assert m["n_problems"] == 2 and m["n_samples"] == 2 and 0 <= m["pass@1"] <= m["pass@2"] <= 1
    records = [json.loads(line) for line in gens.read_text().splitlines()]
    assert len(records) == 4 and all(len(r["responses"]) == 2 for r in records)
    for r in records:  # the saved grades are what the grader says about the saved text
        if r["benchmark"] == "gsm8k":
            assert r["correct"] == [grade(x, r["answer"]) for x in r["responses"]]

    sft = tmp_path / "sft.parquet"
    assert main(["data", "sft", "--generations", str(gens), "--out", str(sft), "--keep-wrong"]) == 0
    rows = pd.read_parquet(sft)
    assert len(rows) == 8
    assert [m["role"] for m in rows.iloc[0]["messages"]] == ["user", "assistant"]
    assert rows.iloc[0]["messages"][1]["content"] == records[0]["responses"][0]

    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    ds = MultiTurnSFTDataset(
        str(sft),
        tokenizer,
        OmegaConf.create(
            {"messages_key": "messages", "max_length": 2048, "truncation": "right", "pad_mode": "no_padding"}
        ),
    )
    assert len(ds) == 8 and ds[0]["input_ids"].numel() > 10


def test_data_sft_drops_wrong_samples_by_default(tmp_path, capsys):
    gens = tmp_path / "g.jsonl"
    gens.write_text(
        json.dumps(
            {
                "benchmark": "gsm8k",
                "id": "0",
                "prompt": [{"role": "user", "content": "1+1?"}],
                "answer": "2",
                "responses": ["\\boxed{2}", "\\boxed{3}"],
                "correct": [True, False],
            }
        )
    )
    assert main(["data", "sft", "--generations", str(gens), "--out", str(tmp_path / "s.parquet")]) == 0
    assert "sft 1 rows (1 wrong samples dropped)" in capsys.readouterr().out
    assert len(pd.read_parquet(tmp_path / "s.parquet")) == 1


def test_batched_greedy_generation_matches_one_at_a_time(tiny_model_path):
    gen = TransformersGenerator(tiny_model_path, device="cpu", batch_size=3)
    prompts = [[{"role": "user", "content": c}] for c in ("Hi", "What is the capital of France, in one word?", "2+2")]
    spec = SamplingSpec(max_new_tokens=6)
    batched = gen.generate(prompts, spec)
    gen.batch_size = 1
    single = gen.generate(prompts, spec)
    assert batched == single and all(len(b) == 1 for b in batched)


def test_bad_options_are_clear_errors(tiny_model_path, capsys):
    with pytest.raises(ConfigError, match="--backend vllm needs vLLM"):
        make_generator("vllm", tiny_model_path)
    with pytest.raises(ConfigError, match="'tgi' is not one of"):
        make_generator("tgi", tiny_model_path)
    with pytest.raises(ConfigError, match="--temperature 0 would repeat"):
        SamplingSpec(n=4, temperature=0.0)
    # the CLI turns these into one line on stderr and exit 2 (tests/test_cli_errors.py covers more)
    argv = ["eval", "--model", tiny_model_path, "--benchmarks", "gsm8k", "--n", "2", "--temperature", "1"]
    assert main([*argv, "--pass-k", "4"]) == 2
    assert "pass@k needs n >= k" in capsys.readouterr().err
    assert main(["eval", "--model", tiny_model_path, "--benchmarks", "gsm9k", "--limit", "1"]) == 2
    assert "unknown benchmark 'gsm9k'" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_limit5_on_gsm8k_and_math500(smollm2_path, benchmarks_dir, tmp_path, capsys):
    """The issue's check: `omniopd-verl eval --limit 5` with the real offline SmolLM2 on CPU."""
    out = tmp_path / "smol.json"
    rc = main(
        [
            "eval",
            "--model",
            "smollm2-135m-instruct",
            "--benchmarks",
            "gsm8k,math500",
            "--limit",
            "5",
            "--benchmarks-dir",
            str(benchmarks_dir),
            "--max-new-tokens",
            "256",
            "--cpu-threads",
            "1",
            "--batch-size",
            "5",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    for name in ("gsm8k", "math500"):
        m = report["benchmarks"][name]
        assert m["n_problems"] == 5 and 0.0 <= m["pass@1"] <= 1.0
