"""`omniopd-verl audit` against bad input, bad paths and a budget stop (issue 10 items 2, 4, 6, "Also"), and
`audit` / `train --dry-run` against issue 22 §2 and §5 (cache paths, unreadable input, no secret echoed).

A real HTTP teacher (the project's OpenAI-compatible server with a scripted generator, which counts the
requests it receives) and a real tiny student on CPU. Every bad path, flag or line must be refused with one
line (exit 2) *before* a model is loaded or a teacher is called: the tests make loading a model raise
and count the server's requests.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import transformers

from omniopd_verl.cli.main import main
from omniopd_verl.testing import ScriptedGenerator, serve_fault_server

WORDS = " ".join(f"w{i}" for i in range(30))
COMPLETIONS = "/v1/completions"


@pytest.fixture(scope="module")
def server():
    with serve_fault_server(generator=ScriptedGenerator(words=6)) as s:
        yield s


@pytest.fixture()
def no_model_load(monkeypatch):
    """Loading model weights raises: proves a check ran before any model load."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags, paths and lines were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def rows(n: int = 3) -> list[dict]:
    return [{"id": f"r{i}", "prompt": f"Question {i}: count.", "response": f" {WORDS}"} for i in range(n)]


def write_jsonl(path, items) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return str(path)


def argv(inp, out, student, server, *extra) -> list[str]:
    return [
        "audit",
        "--input",
        str(inp),
        "--output",
        str(out),
        "--student",
        student,
        "--teacher",
        "openai_completions",
        "--teacher-model",
        "local-teacher",
        "--teacher-api-base",
        server.url,
        "--similarity",
        "ned",
        "--chunks",
        "1",
        "--samples",
        "2",
        "--chunk-len",
        "4",
        *extra,
    ]


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def refused(capsys, args, server) -> str:
    """Exit 2 with one line, and no teacher call made."""
    calls = server.calls(COMPLETIONS)
    assert main(args) == 2
    assert server.calls(COMPLETIONS) == calls
    return one_error_line(capsys.readouterr().err)


# ---- item 2: bad bytes, lone surrogates, missing folders --------------------------------------------------


def test_non_utf8_bytes_name_the_line(tmp_path, server, tiny_model_path, no_model_load, capsys):
    inp = tmp_path / "in.jsonl"
    good = json.dumps(rows(1)[0]).encode()
    inp.write_bytes(good + b"\n" + b'{"id": "x", "prompt": "caf\xe9", "response": "r"}\n')
    calls = server.calls()
    assert main(argv(inp, tmp_path / "o.jsonl", tiny_model_path, server)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{inp} line 2" in line and "UTF-8" in line and "byte 0xe9" in line
    assert server.calls() == calls


def test_lone_surrogate_is_refused_at_read_time(tmp_path, server, tiny_model_path, no_model_load, capsys):
    inp = tmp_path / "in.jsonl"
    # valid JSON, but "\ud800" is half a UTF-16 pair: no text can hold it (the tokenizer failed on it later)
    inp.write_text(json.dumps(rows(1)[0]) + "\n" + '{"id": "s", "prompt": "p", "response": "a \\ud800 b"}\n')
    assert main(argv(inp, tmp_path / "o.jsonl", tiny_model_path, server)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{inp} line 2" in line and "response" in line and "surrogate" in line


@pytest.mark.parametrize("flag", ["--output", "--report"])
def test_missing_output_folder_is_refused_before_any_teacher_call(
    tmp_path, server, tiny_model_path, no_model_load, flag, capsys
):
    inp = write_jsonl(tmp_path / "in.jsonl", rows())
    missing = tmp_path / "no" / "such" / "dir" / "file"
    out = missing if flag == "--output" else tmp_path / "o.jsonl"
    extra = ["--report", str(missing)] if flag == "--report" else []
    calls = server.calls()
    assert main(argv(inp, out, tiny_model_path, server, *extra)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert flag in line and str(missing.parent) in line and "does not exist" in line
    assert server.calls() == calls  # 0 teacher calls made (and paid for)


def test_api_base_without_teacher_model_names_the_flag(tmp_path, server, tiny_model_path, no_model_load, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", rows())
    args = argv(inp, tmp_path / "o.jsonl", tiny_model_path, server)
    i = args.index("--teacher-model")
    del args[i : i + 2]
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--teacher-api-base" in line and "--teacher-model" in line


def test_missing_student_is_named_before_the_teacher_is_built(tmp_path, server, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", rows())
    assert main(argv(inp, tmp_path / "o.jsonl", str(tmp_path / "nope"), server)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--student" in line and "nope" in line


# ---- item 4: budget flags, partial output on a budget stop ------------------------------------------------


def test_budget_flags_reach_the_teacher_config():
    from omniopd_verl.cli.audit import build_config
    from omniopd_verl.cli.main import build_parser

    args = build_parser().parse_args(
        ["audit", "--input", "i", "--output", "o", "--student", "s", "--teacher", "openai_completions"]
        + ["--max-cost-usd", "0.5", "--teacher-timeout-s", "7.5", "--max-retries", "2"]
    )
    teacher = build_config(args).teacher
    assert (teacher.max_cost_usd, teacher.timeout_s, teacher.max_retries) == (0.5, 7.5, 2)
    # and they are validated like the YAML keys
    bad = build_parser().parse_args(
        ["audit", "--input", "i", "--output", "o", "--student", "s", "--teacher", "openai_completions"]
        + ["--max-retries", "-1"]
    )
    with pytest.raises(ValueError, match=r"omniopd.teacher.max_retries=-1 is invalid"):
        build_config(bad)


def test_budget_stop_writes_completed_rows_and_marks_the_output_partial(tmp_path, server, tiny_model_path, capsys):
    items = rows(5)
    inp = write_jsonl(tmp_path / "in.jsonl", items)
    out, report = tmp_path / "o.jsonl", tmp_path / "r.html"
    calls = server.calls()
    # output tokens only, $0.001 each: a call's worst case (2 samples x 5 tokens) is what it costs, $0.01, so
    # $0.025 admits exactly two calls (budget rule: a call is sent only if its worst case fits what is left)
    code = main(
        argv(inp, out, tiny_model_path, server, "--report", str(report))
        + ["--max-concurrency", "1", "--max-cost-usd", "0.025"]
        + ["--teacher-option", "input_cost_per_token=0", "--teacher-option", "output_cost_per_token=0.001"]
    )
    err = capsys.readouterr().err
    assert code == 3, err
    answered = server.calls() - calls
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    records, trailer = lines[:-1], lines[-1]
    # one chunk per row: every call the server answered belongs to a completed, written row
    assert len(records) == answered == 2
    assert all(r["chunks"] and r["id"] in {i["id"] for i in items} for r in records)
    assert trailer["partial"] is True and trailer["rows_written"] == len(records)
    assert trailer["rows_total"] == len(items)
    assert sorted(trailer["missing_ids"]) == sorted({i["id"] for i in items} - {r["id"] for r in records})
    assert "budget" in trailer["reason"]
    assert "PARTIAL OUTPUT" in err and f"{len(records)} of {len(items)} rows" in err and "Traceback" not in err
    assert "PARTIAL" in report.read_text()


def test_budget_stop_inside_a_row_reports_the_spend_of_unwritten_rows(tmp_path, server, tiny_model_path, capsys):
    # 3 anchors in the only row, one call at a time: the budget admits one call ($0.01 of $0.015, the next
    # call's worst case does not fit), the row never completes, so nothing is written, yet that call was
    # made and paid for: the summary must say so
    inp = write_jsonl(tmp_path / "in.jsonl", rows(1))
    out = tmp_path / "o.jsonl"
    args = argv(inp, out, tiny_model_path, server)
    args[args.index("--chunks") + 1] = "3"
    calls = server.calls()
    code = main(
        args
        + ["--max-concurrency", "1", "--max-cost-usd", "0.015"]
        + ["--teacher-option", "input_cost_per_token=0", "--teacher-option", "output_cost_per_token=0.001"]
    )
    err = capsys.readouterr().err
    assert code == 3, err
    answered = server.calls() - calls
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert answered == 1 and lines == [lines[-1]] and lines[-1]["rows_written"] == 0
    assert lines[-1]["missing_ids"] == ["r0"] and lines[-1]["teacher_calls"] == answered
    assert lines[-1]["teacher_cost_usd"] > 0
    assert f"HTTP calls {answered} (retries included)," in err and "cost $0.0000" not in err


# ---- item 6: inputs beyond the student's context ----------------------------------------------------------


def long_rows():
    items = rows(3)
    items[1]["prompt"] = " ".join(["word"] * 2100)  # the tiny student's max_position_embeddings is 2048
    return items


def test_input_beyond_the_student_context_is_refused_naming_row_and_lengths(tmp_path, server, tiny_model_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", long_rows())
    calls = server.calls()
    assert main(argv(inp, tmp_path / "o.jsonl", tiny_model_path, server)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "id='r1'" in line and "line 2" in line and "2048" in line and "--skip-too-long" in line
    assert server.calls() == calls


def test_skip_too_long_audits_the_rest_and_says_which_were_skipped(tmp_path, server, tiny_model_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", long_rows())
    out = tmp_path / "o.jsonl"
    assert main(argv(inp, out, tiny_model_path, server, "--skip-too-long")) == 0
    err = capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["r0", "r2"]
    assert "skipped" in err and "'r1'" in err


def test_score_responses_refuses_beyond_the_context(tiny_model_path):
    from omniopd_verl.errors import ConfigError
    from omniopd_verl.runtime.models import load_causal_lm
    from omniopd_verl.runtime.scoring import score_responses

    model, tok = load_causal_lm(tiny_model_path)
    with pytest.raises(ConfigError, match=r"row 1: prompt \+ response is \d+ tokens .* context of 2048"):
        score_responses(model, tok, ["hi", " ".join(["word"] * 2100)], [" a", " b"])


# ---- issue 22 §2 --cache is a file of its own -------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--output", "--input"])
def test_cache_equal_to_output_or_input_is_refused(tmp_path, server, tiny_model_path, no_model_load, flag, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", rows(2))
    out = str(tmp_path / "out.jsonl")
    same = out if flag == "--output" else inp
    line = refused(capsys, argv(inp, out, tiny_model_path, server, "--cache", same), server)
    assert line == (
        f"omniopd-verl audit: error: --cache {same!r} is the {flag} file: the cache is a SQLite file of its own; "
        "allowed a different path"
    )
    assert open(inp).read() == "".join(json.dumps(r) + "\n" for r in rows(2))  # the input is untouched


# ---- issue 22 §5 caches that cannot serve, input that cannot be read --------------------------------------


def test_a_read_only_cache_is_refused_before_any_call(tmp_path, server, tiny_model_path, no_model_load, capsys):
    import sqlite3

    cache = tmp_path / "cache.sqlite"
    with sqlite3.connect(cache) as db:
        db.execute("CREATE TABLE teacher_cache (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)")
    inp = write_jsonl(tmp_path / "in.jsonl", rows(2))
    if os.geteuid() == 0:  # root ignores permission bits: the immutable flag, where the filesystem has one
        done = subprocess.run(["chattr", "+i", str(cache)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"chattr +i is not available here: {done.stderr.decode().strip()}")
    else:
        os.chmod(cache, 0o444)
    try:
        line = refused(capsys, argv(inp, tmp_path / "o.jsonl", tiny_model_path, server, "--cache", str(cache)), server)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(cache)], check=True)
    assert line == (
        f"omniopd-verl audit: error: omniopd.teacher.cache_path={str(cache)!r} cannot be written (read-only file "
        "or folder): make it writable, or pass another cache path"
    )


@pytest.mark.parametrize(
    "content",
    [b"SQLite format 3\x00" + b"\x10\x00\x01\x01", b"this is a text file, not a cache\n" * 100],
    ids=["truncated", "not-sqlite"],
)
def test_a_damaged_cache_file_is_one_line(tmp_path, server, tiny_model_path, no_model_load, content, capsys):
    cache = tmp_path / "cache.sqlite"
    cache.write_bytes(content)
    inp = write_jsonl(tmp_path / "in.jsonl", rows(2))
    line = refused(capsys, argv(inp, tmp_path / "o.jsonl", tiny_model_path, server, "--cache", str(cache)), server)
    assert line == (
        f"omniopd-verl audit: error: omniopd.teacher.cache_path={str(cache)!r} is not a teacher cache (not SQLite, "
        "or truncated): move it away, or pass another cache path"
    )


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"id": "x", "prompt": "p", "response": ' + "[" * 100_000 + "]" * 100_000 + "}", "JSON nested too deeply"),
        ('{"id": ' + "7" * 5000 + ', "prompt": "p", "response": "r"}', "Exceeds the limit (4300 digits)"),
    ],
    ids=["deeply-nested", "huge-integer"],
)
def test_unreadable_json_values_are_one_line(tmp_path, server, tiny_model_path, no_model_load, bad, message, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(rows(1)[0]) + "\n" + bad + "\n")
    line = refused(capsys, argv(inp, tmp_path / "o.jsonl", tiny_model_path, server), server)
    assert line.startswith(f"omniopd-verl audit: error: {inp} line 2") and message in line


def test_a_too_long_line_is_refused_by_its_length(
    tmp_path, server, tiny_model_path, no_model_load, monkeypatch, capsys
):
    from omniopd_verl.data import jsonl

    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 1000)  # the real limit is 16 MiB; the rule is the same
    inp = tmp_path / "in.jsonl"
    long_row = {"id": "long", "prompt": "p", "response": "r", "teacher_context": "x" * 5000}
    inp.write_text(json.dumps(rows(1)[0]) + "\n" + json.dumps(long_row) + "\n")
    line = refused(capsys, argv(inp, tmp_path / "o.jsonl", tiny_model_path, server), server)
    assert line == (
        f"omniopd-verl audit: error: {inp} line 2 is longer than 1000 bytes (the longest input line read): "
        "shorten it, or split its text"
    )


def test_a_misspelt_input_key_is_refused_naming_it(tmp_path, server, tiny_model_path, no_model_load, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({**rows(1)[0], "teacher_contxt": "the reference solution"}) + "\n")
    line = refused(capsys, argv(inp, tmp_path / "o.jsonl", tiny_model_path, server), server)
    assert line == (
        f"omniopd-verl audit: error: {inp} line 1 has unknown keys 'teacher_contxt': allowed keys id, prompt, "
        "response, teacher_context"
    )


# ---- issue 22 §5 keys never echoed ------------------------------------------------------------------------


def test_a_key_passed_as_the_key_variable_is_not_echoed(tmp_path, server, tiny_model_path, no_model_load, capsys):
    key = "sk-proj-Qw12Er34Ty56Ui78"
    inp = write_jsonl(tmp_path / "in.jsonl", rows(2))
    args = argv(inp, tmp_path / "o.jsonl", tiny_model_path, server, "--teacher-api-key-env", key)
    line = refused(capsys, args, server)
    assert key not in line and "api_key_env is not the name of an environment variable" in line


def test_credentials_in_the_api_base_are_not_echoed(tmp_path, server, tiny_model_path, no_model_load, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", rows(2))
    args = argv(inp, tmp_path / "o.jsonl", tiny_model_path, server)
    base = server.url.replace("http://", "http://carol:pw-Echo-7731@") + "?key=qk-Echo-8842"
    i = args.index("--teacher-api-base")
    args[i + 1] = base
    j = args.index("--teacher-model")
    del args[j : j + 2]  # the error that echoed the API base
    line = refused(capsys, args, server)
    assert f"--teacher-api-base {server.url} needs --teacher-model" in line
    assert "pw-Echo-7731" not in line and "qk-Echo-8842" not in line


def test_train_dry_run_masks_keys_placed_in_the_config(capsys):
    overrides = [  # a teacher that takes extra_kwargs; its options replace the recipe's (steer is not litellm's)
        "omniopd.teacher.name=litellm",
        "omniopd.teacher.model=openai/gpt-4o-mini",
        'omniopd.teacher.options={"extra_kwargs": {"api_key": "sk-yaml-Op90Zx12", "extra_headers": '
        '{"Authorization": "Bearer sk-yaml-Hd55Kp21"}}}',
    ]
    config = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "quickstart_cpu", "quickstart_cpu.yaml")
    code = main(["train", "--engine", "local", "--config", config, "--dry-run", *overrides])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "sk-yaml-Op90Zx12" not in out + err and "sk-yaml-Hd55Kp21" not in out + err
    assert "api_key: '***'" in out and "Authorization: '***'" in out
    assert "prompt_key: question" in out  # a dataset column named *_key is left alone
