"""`omniopd-verl data prepare` writes verl parquet files whose row counts match SOURCES.md."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from omniopd_verl.cli.main import main
from omniopd_verl.data import benchmarks
from omniopd_verl.data.prepare import output_path


def _sources_rows(benchmarks_dir) -> dict[str, int]:
    """file -> rows, parsed from the SOURCES.md table (the independent record of each file's size)."""
    rows = {}
    for line in (benchmarks_dir / "SOURCES.md").read_text().splitlines():
        m = re.match(r"\|\s*([\w./-]+\.(?:jsonl|json|gz|parquet))\s*\|\s*(\d+)\s*\|", line)
        if m:
            rows[m.group(1)] = int(m.group(2))
    return rows


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, benchmarks_dir):
    out = tmp_path_factory.mktemp("verl_data")
    assert main(["data", "prepare", "--benchmarks-dir", str(benchmarks_dir), "--out", str(out)]) == 0
    return out


def test_every_source_file_becomes_a_parquet_with_the_sources_md_row_count(prepared, benchmarks_dir, capsys):
    expected = _sources_rows(benchmarks_dir)
    assert len(expected) == 13, expected  # the table lists 13 files
    covered = set()
    for name, spec in benchmarks.BENCHMARKS.items():
        n = len(pd.read_parquet(output_path(prepared, name)))
        if name == "math_train":  # derived: MATH test minus MATH-500
            assert n == expected["math/test.jsonl"] - expected["math500/test.jsonl"]
            continue
        assert n == expected[spec.file], name
        covered.add(spec.file)
    assert covered == set(expected)


def test_rows_have_verl_schema_and_correct_answers(prepared):
    gsm = pd.read_parquet(output_path(prepared, "gsm8k"))
    row = gsm.iloc[0]
    assert row["data_source"] == "gsm8k" and row["ability"] == "math"
    assert list(row["prompt"][0].keys()) == ["role", "content"] and row["prompt"][0]["role"] == "user"
    assert "Janet" in row["prompt"][0]["content"] and "\\boxed{}" in row["prompt"][0]["content"]
    assert dict(row["reward_model"]) == {"ground_truth": "18", "style": "rule"}
    assert row["extra_info"]["index"] == 0 and row["extra_info"]["split"] == "test"
    assert list(gsm["extra_info"].map(lambda e: e["index"])) == list(range(len(gsm)))

    math500 = pd.read_parquet(output_path(prepared, "math500"))
    assert math500.iloc[0]["reward_model"]["ground_truth"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    math = pd.read_parquet(output_path(prepared, "math"))
    assert math.iloc[0]["reward_model"]["ground_truth"] == "2"  # from the solution's \boxed{2}
    assert pd.read_parquet(output_path(prepared, "amc23")).iloc[0]["reward_model"]["ground_truth"] == "27.0"
    oly = pd.read_parquet(output_path(prepared, "olympiadbench"))
    assert not oly["reward_model"].map(lambda r: "$" in r["ground_truth"]).any()

    he = pd.read_parquet(output_path(prepared, "humaneval"))
    truth = json.loads(he.iloc[0]["reward_model"]["ground_truth"])
    assert truth["entry_point"] == "has_close_elements" and he.iloc[0]["reward_model"]["style"] == "code"
    # MATH-500 problems are held out of the training pool
    pool = set(pd.read_parquet(output_path(prepared, "math_train"))["extra_info"].map(lambda e: e["question"]))
    assert not pool & set(math500["extra_info"].map(lambda e: e["question"]))


def test_prepared_parquet_loads_in_verls_rl_dataset(prepared, smollm2_path):
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    config = OmegaConf.create(
        {
            "prompt_key": "prompt",
            "max_prompt_length": 1024,
            "filter_overlong_prompts": False,
            "return_raw_chat": True,
            "truncation": "error",
        }
    )
    ds = RLHFDataset(str(output_path(prepared, "aime24")), tokenizer, config)
    assert len(ds) == 30
    item = ds[0]
    assert item["data_source"] == "aime24"
    assert item["reward_model"]["ground_truth"] == "204"


def test_template_option_and_user_file(tmp_path, benchmarks_dir, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "data",
                "prepare",
                "--benchmarks",
                "aime25",
                "--benchmarks-dir",
                str(benchmarks_dir),
                "--out",
                str(out),
                "--template",
                "Q: {question}\nA:",
                "--system-prompt",
                "Be brief.",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert re.search(r"aime25\s+30 rows", printed)
    row = pd.read_parquet(output_path(out, "aime25")).iloc[0]
    assert row["prompt"][0]["content"] == "Be brief."
    assert row["prompt"][1]["content"].startswith("Q: Find the sum") and row["prompt"][1]["content"].endswith("\nA:")

    src = tmp_path / "mine.jsonl"
    src.write_text(
        "\n".join(json.dumps({"q": f"What is {i}+{i}?", "sol": f"It is {2 * i}.\n#### {2 * i}"}) for i in range(4))
        + "\n"
    )
    assert (
        main(
            [
                "data",
                "prepare",
                "--input",
                str(src),
                "--name",
                "mine",
                "--question-key",
                "q",
                "--answer-key",
                "sol",
                "--answer-format",
                "gsm8k",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    mine = pd.read_parquet(out / "mine" / "train.parquet")
    assert list(mine["reward_model"].map(lambda r: r["ground_truth"])) == ["0", "2", "4", "6"]
    assert set(mine["data_source"]) == {"mine"}


def test_bad_input_is_a_clear_error(tmp_path, benchmarks_dir, capsys):
    # the CLI prints the ConfigError as one line and exits 2 (main() turns every project error into that)
    def error_of(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    assert re.search(
        "unknown benchmark 'gsm9k'.*known",
        error_of(["data", "prepare", "--benchmarks", "gsm9k", "--out", str(tmp_path)]),
    )
    err = error_of(
        [
            "data",
            "prepare",
            "--benchmarks",
            "aime24",
            "--template",
            "no placeholder",
            "--out",
            str(tmp_path),
            "--benchmarks-dir",
            str(benchmarks_dir),
        ]
    )
    assert "nor a format string" in err
    src = tmp_path / "x.jsonl"
    src.write_text('{"question": "1+1?", "answer": "2"}\n')
    err = error_of(
        ["data", "prepare", "--input", str(src), "--name", "x", "--answer-key", "solution", "--out", str(tmp_path)]
    )
    assert re.search("no column 'solution'.*columns", err)
    err = error_of(
        [
            "data",
            "prepare",
            "--benchmarks",
            "aime24",
            "--benchmarks-dir",
            str(tmp_path / "does_not_exist"),
            "--out",
            str(tmp_path),
        ]
    )
    assert re.search("no benchmark folder at .*does_not_exist.*grade-school-math", err)
    empty = tmp_path / "empty_benchmarks"  # a folder that exists but lacks the file: named with its path
    empty.mkdir()
    err = error_of(
        ["data", "prepare", "--benchmarks", "aime24", "--benchmarks-dir", str(empty), "--out", str(tmp_path)]
    )
    assert re.search("expects .*empty_benchmarks/aime24/test.jsonl", err)


def test_without_a_benchmark_folder_it_says_how_to_get_the_public_sets(tmp_path, capsys):
    """A user's clone has no ../shared: one line naming the folder tried, the flag, the variable and sources."""
    missing = tmp_path / "no-such-folder"
    rc = main(["data", "prepare", "--benchmarks", "gsm8k", "--benchmarks-dir", str(missing), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"no benchmark folder at {missing}" in err
    assert "--benchmarks-dir" in err and "OMNIOPD_BENCHMARKS" in err
    assert "github.com/openai/grade-school-math" in err and "data prepare --input FILE --name NAME" in err
    assert not list(tmp_path.glob("*/*.parquet"))  # nothing written
