"""Every `omniopd-verl` subcommand answers bad input with one line and exit 2, never a traceback
(issue 10 item 2 and "Also"): `data`, `eval`, `train --engine local` (unparsable YAML, --dry-run, an
unknown key with a suggestion) and the verl path's unknown `omniopd.*` keys. Checks that need no model
run before one is loaded: the tests make loading model weights raise.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers
import yaml

from omniopd_verl.cli.main import main

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart_cpu" / "quickstart_cpu.yaml"


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture()
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


# ---- data ------------------------------------------------------------------------------------------------


def test_data_sft_missing_generations_file(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert main(["data", "sft", "--generations", str(missing), "--out", str(tmp_path / "s.parquet")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--generations" in line and str(missing) in line


def test_data_sft_bad_json_line_is_named(tmp_path, capsys):
    gens = tmp_path / "g.jsonl"
    gens.write_text('{"benchmark": "gsm8k"}\n{not json\n')
    assert main(["data", "sft", "--generations", str(gens), "--out", str(tmp_path / "s.parquet")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{gens} line 2" in line and "not JSON" in line


def test_data_prepare_input_without_name_exits_2(tmp_path, capsys):
    inp = tmp_path / "mine.jsonl"
    inp.write_text('{"question": "q", "answer": "a"}\n')
    assert main(["data", "prepare", "--input", str(inp), "--out", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--name" in line


def test_data_prepare_unknown_benchmark_is_one_line(tmp_path, capsys):
    assert main(["data", "prepare", "--benchmarks", "gsm9k", "--out", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "unknown benchmark 'gsm9k'" in line


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"question": "q", "answer": "a"}\nnot json\n', "line 2 is not JSON"),
        (b'{"question": "q", "answer": "a"}\n{"question": "caf\xe9", "answer": "a"}\n', "line 2 is not UTF-8"),
        (b'{"question": "q", "answer": "a"}\n[1, 2]\n', "line 2 must be a JSON object"),
    ],
)
def test_data_prepare_bad_input_lines_are_named(tmp_path, content, message, capsys):
    inp = tmp_path / "mine.jsonl"
    inp.write_bytes(content)
    assert main(["data", "prepare", "--input", str(inp), "--name", "x", "--out", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{inp} {message}" in line


def test_data_prepare_out_that_cannot_be_created_is_named(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["data", "prepare", "--benchmarks", "gsm8k", "--out", str(blocker / "verl")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--out" in line and str(blocker / "verl") in line


# ---- eval ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--benchmarks", "gsm9k"], "unknown benchmark 'gsm9k'"),
        (["--pass-k", "one"], "--pass-k 'one' is invalid"),
        (["--n", "2", "--temperature", "1", "--pass-k", "4"], "pass@k needs n >= k"),
        (["--benchmarks", "gsm8k", "--benchmarks-dir", "/no/such/dir"], "no benchmark folder at /no/such/dir"),
    ],
)
def test_eval_bad_flags_are_one_line_before_the_model_loads(tiny_model_path, no_model_load, flags, message, capsys):
    assert main(["eval", "--model", tiny_model_path, "--limit", "1", *flags]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert message in line


def test_eval_output_path_is_checked_before_the_model_loads(tmp_path, tiny_model_path, no_model_load, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = blocker / "report.json"  # its folder is a file: cannot be created
    assert main(["eval", "--model", tiny_model_path, "--benchmarks", "gsm8k", "--output", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--output" in line and str(out) in line


def test_eval_shows_progress_on_stderr_and_writes_json_only_to_output(
    tmp_path, tiny_model_path, benchmarks_dir, capsys
):
    out = tmp_path / "report.json"
    rc = main(
        ["eval", "--model", tiny_model_path, "--benchmarks", "gsm8k", "--limit", "3", "--batch-size", "2"]
        + ["--max-new-tokens", "4", "--benchmarks-dir", str(benchmarks_dir), "--cpu-threads", "1"]
        + ["--output", str(out)]
    )
    assert rc == 0
    captured = capsys.readouterr()
    assert "| gsm8k | 3 |" in captured.out
    assert '"benchmarks"' not in captured.out  # the JSON went to --output only
    assert json.loads(out.read_text())["benchmarks"]["gsm8k"]["n_problems"] == 3
    assert "gsm8k: generating 3 prompts" in captured.err and "2/3" in captured.err  # per batch of 2


def test_eval_without_output_prints_the_json(tmp_path, benchmarks_dir, capsys, monkeypatch):
    # a scripted back-end (same interface): only the CLI's printing is under test here
    from omniopd_verl.eval import generation

    class Scripted:
        name = "scripted"

        def __init__(self, model, **options):
            pass

        def generate(self, prompts, spec, progress=None):
            return [["\\boxed{1}"] for _ in prompts]

    monkeypatch.setitem(generation.BACKENDS, "transformers", Scripted)
    rc = main(
        ["eval", "--model", "m", "--benchmarks", "gsm8k", "--limit", "2", "--benchmarks-dir", str(benchmarks_dir)]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["benchmarks"]["gsm8k"]["n_problems"] == 2


# ---- train --engine local ----------------------------------------------------------------------------------


def test_train_local_unparsable_yaml_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("omniopd:\n  chunks: 2\n  samples: [4\nlocal: {}\n")
    assert main(["train", "--engine", "local", "--config", str(bad)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(bad) in line and "line" in line


def test_train_local_dry_run_prints_yaml_and_valid(capsys):
    assert main(["train", "--engine", "local", "--config", str(QUICKSTART), "--dry-run", "local.steps=2"]) == 0
    captured = capsys.readouterr()
    cfg = yaml.safe_load(captured.out)
    assert cfg["local"]["steps"] == 2 and cfg["omniopd"]["chunks"] == 2 and cfg["omniopd"]["teacher"]["name"]
    assert "valid" in captured.err and str(QUICKSTART) in captured.err


def test_train_local_unknown_key_suggests_the_close_one(capsys):
    assert main(["train", "--engine", "local", "--config", str(QUICKSTART), "--dry-run", "omniopd.alpah=2"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "unknown key omniopd.alpah; did you mean alpha?" in line
    assert main(["train", "--engine", "local", "--config", str(QUICKSTART), "--dry-run", "local.data.pth=x"]) == 2
    assert "unknown key local.data.pth; did you mean path?" in capsys.readouterr().err


def test_unknown_key_without_a_close_match_lists_the_allowed_keys():
    from omniopd_verl.config import OmniOPDConfig
    from omniopd_verl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown key omniopd.teacher.zzzz; allowed keys: \['name'"):
        OmniOPDConfig.from_dict({"teacher": {"zzzz": 1}})


# ---- train (verl path): an unknown omniopd key, with or without Hydra's '+' --------------------------------


@pytest.mark.parametrize("override", ["omniopd.alpah=2", "+omniopd.alpah=2"])
def test_train_verl_unknown_omniopd_key_suggests_the_close_one(override, capsys):
    assert main(["train", "--dry-run", override]) == 2
    err = capsys.readouterr().err
    assert "unknown key omniopd.alpah; did you mean alpha?" in err and "Traceback" not in err
    assert "append to your config" not in err  # Hydra's "+key" advice would add a key nothing reads


def test_train_local_refuses_a_prompt_and_response_budget_beyond_the_student_context(tiny_model_path, capsys):
    # the tiny student has max_position_embeddings 2048: 2000 prompt + 100 new tokens cannot fit
    argv = ["train", "--engine", "local", "--config", str(QUICKSTART), "--dry-run", f"local.model={tiny_model_path}"]
    assert main([*argv, "local.max_prompt_tokens=2000", "local.max_new_tokens=100"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "local.max_prompt_tokens=2000 + local.max_new_tokens=100 = 2100" in line and "2048" in line
    assert main([*argv, "local.max_prompt_tokens=1948", "local.max_new_tokens=100"]) == 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("local.data.path=no/such/train.jsonl", "local.data.path='no/such/train.jsonl' is invalid: no such file"),
        ("local.data.heldout_path=no/such/h.jsonl", "local.data.heldout_path='no/such/h.jsonl' is invalid"),
        ("local.output_dir=/proc/version/run", "local.output_dir='/proc/version/run' is invalid"),
    ],
)
def test_train_local_paths_are_checked_before_any_model_loads(override, message, no_model_load, capsys):
    assert main(["train", "--engine", "local", "--config", str(QUICKSTART), "--dry-run", override]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert message in line


def test_train_local_bad_data_line_is_named_before_any_model_loads(tmp_path, no_model_load, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "q", "answer": "a"}\n{oops\n')
    argv = ["train", "--engine", "local", "--config", str(QUICKSTART), "--dry-run", f"local.data.path={data}"]
    assert main([*argv, "local.data.heldout_path=null", "local.data.heldout_prompts=0"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{data} line 2 is not JSON" in line


def test_train_verl_unparsable_yaml_is_one_line(tmp_path, capsys):
    bad = tmp_path / "recipe.yaml"
    bad.write_text("defaults:\n  - omniopd_fsdp\nomniopd: [1\n")
    assert main(["train", "--dry-run", "--config", str(bad)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(bad) in line and "line 4" in line and "not valid YAML" in line


# ---- train --dry-run builds the plugins the run would use (issue 21 §3) ----------------------------------

TEACHER = ("omniopd.teacher.model=local-teacher", "omniopd.teacher.api_base=http://127.0.0.1:8000/v1")


@pytest.fixture()
def no_similarity_model(monkeypatch):
    from omniopd_verl.similarity import embedding

    def refuse(*args, **kwargs):
        raise AssertionError("the embedding model was loaded by a dry run")

    monkeypatch.setattr(embedding, "load_sentence_transformer", refuse)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "+omniopd.similarity_options.batch_sise=8",
            "unknown key omniopd.similarity_options.batch_sise; did you mean batch_size? "
            "(options of the embedding similarity plugin)",
        ),
        (
            "+omniopd.similarity_options.batch_size=0",
            "rejected by the embedding similarity plugin: similarity_options.batch_size=0 is invalid",
        ),
        (
            "+omniopd.scheduler_options.window=3",
            "unknown key omniopd.scheduler_options.window: the peak_entropy scheduler plugin takes no options",
        ),
        (
            "+omniopd.teacher.options.extra_bdy={}",
            "omniopd.teacher.options has unknown keys ['extra_bdy'] for the openai_completions teacher "
            "(did you mean extra_body?)",
        ),
        (
            "+omniopd.teacher.options.backoff_base_s=-1",
            "omniopd.teacher.options.backoff_base_s=-1 is invalid: allowed a finite number > 0",
        ),
        (
            "omniopd.teacher.api_key_env=OMNIOPD_TEST_UNSET_KEY",
            "the environment variable OMNIOPD_TEST_UNSET_KEY is not set or empty",
        ),
    ],
)
def test_train_verl_dry_run_with_a_bad_plugin_option_exits_2_before_any_model_loads(
    override, message, no_model_load, no_similarity_model, monkeypatch, capsys
):
    monkeypatch.delenv("OMNIOPD_TEST_UNSET_KEY", raising=False)
    assert main(["train", "--dry-run", *TEACHER, override]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("omniopd-verl train: invalid config: ") and message in line, line


def test_train_verl_dry_run_passes_with_good_plugin_options_and_the_key_set(no_model_load, monkeypatch, capsys):
    monkeypatch.setenv("OMNIOPD_TEST_KEY", "not-a-real-key")
    argv = ["train", "--dry-run", *TEACHER, "+omniopd.similarity_options.batch_size=8"]
    assert main([*argv, "omniopd.teacher.api_key_env=OMNIOPD_TEST_KEY"]) == 0, capsys.readouterr().err
    assert "is valid" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "+omniopd.teacher.options.stear={}",
            "omniopd.teacher.options has unknown keys ['stear'] for the transformers teacher (did you mean steer?)",
        ),
        ("omniopd.teacher.options.dtype=float64", "omniopd.teacher.options.dtype='float64' is invalid"),
        ("+omniopd.similarity_options.device_map=auto", "unknown key omniopd.similarity_options.device_map"),
    ],
)
def test_train_local_dry_run_with_a_bad_plugin_option_exits_2_before_any_model_loads(
    override, message, no_model_load, no_similarity_model, capsys
):
    if "dtype" in override:  # the recipe sets no dtype: add it, then the value is the plugin's to refuse
        override = "+" + override
    assert main(["train", "--engine", "local", "--config", str(QUICKSTART), "--dry-run", override]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert message in line, line


@pytest.mark.parametrize("engine", [[], ["--engine", "local", "--config", str(QUICKSTART)]], ids=["verl", "local"])
def test_plus_means_add_a_key_on_both_engines(engine, capsys):
    """`key=value` sets a key that is there; `+key=value` adds one; the same line fails the same way on both."""
    base = ["train", "--dry-run", *engine, *([] if engine else TEACHER)]
    assert main([*base, "+omniopd.teacher.options.max_tokens_factor=2.0"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main([*base, "omniopd.teacher.options.max_tokens_factor=2.0"]) == 2  # not there: needs '+'
    assert "omniopd.teacher.options.max_tokens_factor" in one_error_line(capsys.readouterr().err)
    assert main([*base, "+omniopd.alpha=2.0"]) == 2  # there already: '+' is refused, as Hydra refuses it
    assert "omniopd.alpha" in one_error_line(capsys.readouterr().err)


# ---- eval: --config FILE, eval.KEY=VALUE overrides, flags as shortcuts (issue 21 §3) ------------------------


@pytest.fixture()
def scripted_eval_backend(monkeypatch):
    """A back-end with the generator interface that answers \\boxed{1} and records the spec it was given."""
    from omniopd_verl.eval import generation

    seen = {}

    class Scripted:
        name = "scripted"

        def __init__(self, model, **options):
            seen.update(model=model, **options)

        def generate(self, prompts, spec, progress=None):
            seen["spec"] = spec
            return [["\\boxed{1}"] * spec.n for _ in prompts]

    monkeypatch.setitem(generation.BACKENDS, "transformers", Scripted)
    return seen


def test_eval_reads_its_node_of_a_config_file_then_flags_then_overrides(
    tmp_path, benchmarks_dir, scripted_eval_backend, capsys
):
    config = tmp_path / "run.yaml"
    config.write_text(
        "omniopd: {alpha: 2.0}   # another command's node: not read by eval\n"
        f"eval: {{model: m, benchmarks: gsm8k, limit: 3, n: 2, temperature: 0.7, benchmarks_dir: {benchmarks_dir}}}\n"
    )
    out = tmp_path / "report.json"
    argv = ["eval", "--config", str(config), "--batch-size", "3", "eval.limit=2", "eval.pass_k=2", "--output", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["benchmarks"]["gsm8k"]["n_problems"] == 2  # the override beat the file's limit: 3
    spec = scripted_eval_backend["spec"]
    assert (spec.n, spec.temperature) == (2, 0.7)  # from the file
    assert scripted_eval_backend["batch_size"] == 3  # from the flag
    assert "pass@2" in json.dumps(report)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["eval.nn=2"], "unknown key eval.nn; did you mean n?"),
        (["omniopd.alpha=2"], "unknown key omniopd.alpha: this command reads no omniopd: node"),
        (["eval.n=two"], "eval.n='two' is invalid: allowed an integer"),
        (["--n", "2", "eval.n=3"], "eval.n is given twice, by --n and by 'eval.n=3': keep one"),
    ],
)
def test_eval_bad_config_keys_are_one_line_before_the_model_loads(
    tiny_model_path, no_model_load, extra, message, capsys
):
    assert main(["eval", "--model", tiny_model_path, "--limit", "1", *extra]) == 2
    assert message in one_error_line(capsys.readouterr().err)


def test_eval_without_a_model_says_where_to_give_one(no_model_load, capsys):
    assert main(["eval", "--benchmarks", "gsm8k"]) == 2
    assert "eval.model is not set: give --model" in one_error_line(capsys.readouterr().err)


def test_train_dry_run_checks_a_local_model_teacher_without_loading_it(no_model_load, capsys):
    """vllm (not installed here) and transformers define check_config: the dry run needs neither the
    library nor the weights to find what is missing."""
    assert main(["train", "--dry-run", "omniopd.teacher.name=vllm"]) == 2
    assert "omniopd.teacher.model=None is invalid for the vllm teacher" in one_error_line(capsys.readouterr().err)
    assert main(["train", "--dry-run", "omniopd.teacher.name=transformers", "omniopd.teacher.model=m"]) == 0
    capsys.readouterr()
    argv = ["train", "--dry-run", "omniopd.teacher.name=transformers", "+omniopd.teacher.options.model=reference"]
    assert main(argv) == 2  # verl has no reference model to share with the teacher
    assert "needs the engine's reference model" in one_error_line(capsys.readouterr().err)
