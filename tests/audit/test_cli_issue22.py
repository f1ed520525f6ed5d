"""`omniopd-verl audit` and `train --dry-run` against issue 22 §2 and §5: one line (exit 2) instead of a
traceback or a lost run, before any model loads or teacher call, and no secret in what is printed.

A real HTTP teacher (the project's server with a scripted generator, counting the requests it gets) and
a real tiny student's tokenizer; loading model weights raises, proving the checks come first.
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
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags, paths and lines were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def rows(n: int = 2) -> list[dict]:
    return [{"id": f"r{i}", "prompt": f"Question {i}: count.", "response": f" {WORDS}"} for i in range(n)]


def write_jsonl(path, items) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return str(path)


def argv(inp, out, student, server, *extra) -> list[str]:
    return [
        "audit", "--input", str(inp), "--output", str(out), "--student", student,
        "--teacher", "openai_completions", "--teacher-model", "local-teacher", "--teacher-api-base", server.url,
        "--similarity", "ned", "--chunks", "1", "--samples", "2", "--chunk-len", "4", *extra,
    ]  # fmt: skip


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


# ---- §2 --cache is a file of its own ---------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--output", "--input"])
def test_cache_equal_to_output_or_input_is_refused(tmp_path, server, tiny_model_path, no_model_load, flag, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", rows())
    out = str(tmp_path / "out.jsonl")
    same = out if flag == "--output" else inp
    line = refused(capsys, argv(inp, out, tiny_model_path, server, "--cache", same), server)
    assert line == (
        f"omniopd-verl audit: error: --cache {same!r} is the {flag} file: the cache is a SQLite file of its own; "
        "allowed a different path"
    )
    assert open(inp).read() == "".join(json.dumps(r) + "\n" for r in rows())  # the input is untouched


# ---- §5 caches that cannot serve, input that cannot be read --------------------------------------------------


def test_a_read_only_cache_is_refused_before_any_call(tmp_path, server, tiny_model_path, no_model_load, capsys):
    import sqlite3

    cache = tmp_path / "cache.sqlite"
    with sqlite3.connect(cache) as db:
        db.execute("CREATE TABLE teacher_cache (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)")
    inp = write_jsonl(tmp_path / "in.jsonl", rows())
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
    inp = write_jsonl(tmp_path / "in.jsonl", rows())
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


# ---- §5 keys never echoed ---------------------------------------------------------------------------------------


def test_a_key_passed_as_the_key_variable_is_not_echoed(tmp_path, server, tiny_model_path, no_model_load, capsys):
    key = "sk-proj-Qw12Er34Ty56Ui78"
    inp = write_jsonl(tmp_path / "in.jsonl", rows())
    args = argv(inp, tmp_path / "o.jsonl", tiny_model_path, server, "--teacher-api-key-env", key)
    line = refused(capsys, args, server)
    assert key not in line and "api_key_env is not the name of an environment variable" in line


def test_credentials_in_the_api_base_are_not_echoed(tmp_path, server, tiny_model_path, no_model_load, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", rows())
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
    overrides = [
        'omniopd.teacher.options.extra_kwargs={"api_key": "sk-yaml-Op90Zx12", "extra_headers": '
        '{"Authorization": "Bearer sk-yaml-Hd55Kp21"}}',
    ]
    config = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "quickstart_cpu", "quickstart_cpu.yaml")
    code = main(["train", "--engine", "local", "--config", config, "--dry-run", *overrides])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "sk-yaml-Op90Zx12" not in out + err and "sk-yaml-Hd55Kp21" not in out + err
    assert "api_key: '***'" in out and "Authorization: '***'" in out
    assert "prompt_key: question" in out  # a dataset column named *_key is left alone
