"""`omniopd-verl audit` takes the configuration every command takes (issue 21 §3): `--config FILE`, the
`omniopd.KEY=VALUE` overrides with the grammar of `train` (`+` adds a plugin option), the flags as
shortcuts. The plugin here is an outsider's: a package that is not omniopd-verl, found through its own
installed metadata (a `.dist-info` with `entry_points.txt` on sys.path), as `pip install` leaves it.
"""

from __future__ import annotations

import json
import re
import textwrap

import pytest

from omniopd_verl import registry
from omniopd_verl.cli.main import main

OUTSIDER = '''
"""An outsider's similarity: weight * Jaccard overlap of the lower-cased word sets."""
import re

from omniopd_verl.errors import ConfigError

BUILT = []  # every instance's options, for the test to read


class WordOverlap:
    name = "word_overlap"

    def __init__(self, weight: float = 1.0, min_len: int = 1):
        if not isinstance(weight, (int, float)) or not 0 < weight <= 1:
            raise ConfigError(
                f"omniopd.similarity_options.weight={weight!r} is invalid: allowed a number in (0, 1]"
            )
        self.weight, self.min_len = float(weight), int(min_len)
        BUILT.append({"weight": self.weight, "min_len": self.min_len})

    def score(self, pairs):
        out = []
        for a, b in pairs:
            wa = {w for w in re.findall(r"\\w+", a.lower()) if len(w) >= self.min_len}
            wb = {w for w in re.findall(r"\\w+", b.lower()) if len(w) >= self.min_len}
            out.append(self.weight * (len(wa & wb) / len(wa | wb) if wa | wb else 1.0))
        return out
'''


@pytest.fixture()
def outsider(tmp_path, monkeypatch):
    """Install the outsider package (module + dist-info) on sys.path; the registry discovers it afresh."""
    site = tmp_path / "site"
    (site / "outsider_similarity").mkdir(parents=True)
    (site / "outsider_similarity" / "__init__.py").write_text(OUTSIDER)
    info = site / "outsider_similarity-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: outsider-similarity\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[omniopd_verl.similarity]\nword_overlap = outsider_similarity:WordOverlap\n"
    )
    monkeypatch.syspath_prepend(str(site))
    registry.reset()
    yield
    registry.reset()
    import sys

    sys.modules.pop("outsider_similarity", None)


def naive_overlap(a: str, b: str, weight: float, min_len: int) -> float:
    wa = {w for w in re.findall(r"\w+", a.lower()) if len(w) >= min_len}
    wb = {w for w in re.findall(r"\w+", b.lower()) if len(w) >= min_len}
    return weight * (len(wa & wb) / len(wa | wb) if wa | wb else 1.0)


ROWS = [
    {"id": "a", "prompt": "Count:", "response": " one two three four five six seven eight nine ten eleven twelve"},
    {"id": "b", "prompt": "Say:", "response": " the cat sat on the mat and the dog sat on the log by the door"},
]


def audit_argv(tmp_path, model_path, *extra):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return [
        "audit",
        "--input",
        str(inp),
        "--output",
        str(tmp_path / "out.jsonl"),
        "--student",
        model_path,
        "--teacher",
        "markov",  # the example plugin's teacher: no server, no model
        "--similarity",
        "word_overlap",
        "--chunks",
        "2",
        "--samples",
        "2",
        "--chunk-len",
        "4",
        *extra,
    ]


def test_an_outsider_similarity_option_set_on_the_audit_command_line_reaches_the_plugin(
    tmp_path, outsider, tiny_model_path, capsys
):
    argv = audit_argv(tmp_path, tiny_model_path, "+omniopd.similarity_options.weight=0.5")
    argv += ["+omniopd.similarity_options.min_len=3"]
    assert main(argv) == 0, capsys.readouterr().err
    import outsider_similarity

    assert outsider_similarity.BUILT[-1] == {"weight": 0.5, "min_len": 3}
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["similarity"] for r in records] == ["word_overlap", "word_overlap"]
    chunks = [c for r in records for c in r["chunks"]]
    assert len(chunks) == 4
    for c in chunks:  # the scores are the plugin's with these options, recomputed here
        expected = [naive_overlap(c["student_text"], t, 0.5, 3) for t in c["teacher_texts"]]
        assert c["similarities"] == pytest.approx(expected)
    assert any(s > 0 for c in chunks for s in c["similarities"])  # the check is not vacuous
    assert max(s for c in chunks for s in c["similarities"]) <= 0.5


def test_the_same_option_from_a_config_file_and_a_flag_override(tmp_path, outsider, tiny_model_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        textwrap.dedent(
            """
            omniopd:
              similarity_options: {weight: 0.25}
              teacher: {name: openai_completions}
            local: {steps: 3}   # a local run file: audit reads its omniopd node only
            """
        )
    )
    # the --teacher flag wins over the file's teacher; the file's option is set, so it is overridden without '+'
    argv = audit_argv(tmp_path, tiny_model_path, "--config", str(config), "omniopd.similarity_options.weight=0.75")
    assert main(argv) == 0, capsys.readouterr().err
    import outsider_similarity

    assert outsider_similarity.BUILT[-1] == {"weight": 0.75, "min_len": 1}
    assert json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])["chunks"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["+omniopd.similarity_options.wieght=0.5"],
            "unknown key omniopd.similarity_options.wieght; did you mean weight? "
            "(options of the word_overlap similarity plugin)",
        ),
        (["+omniopd.similarity_options.weight=2"], "omniopd.similarity_options.weight=2 is invalid: allowed a number"),
        (
            ["omniopd.similarity_options.weight=0.5"],
            "omniopd.similarity_options.weight is not set, so there is nothing to override; add it with "
            "+omniopd.similarity_options.weight=0.5",
        ),
        (["omniopd.chunsk=3"], "unknown key omniopd.chunsk; did you mean chunks?"),
        (["local.steps=3"], "unknown key local.steps: this command reads no local: node"),
        (["omniopd.samples=3"], "omniopd.samples is given twice, by --samples and by 'omniopd.samples=3': keep one"),
        (["+omniopd.teacher.options.fail_first=x"], "omniopd.teacher.options rejected by the markov teacher"),
    ],
)
def test_bad_audit_options_are_one_line_before_any_model_loads(
    tmp_path, outsider, tiny_model_path, extra, message, capsys, monkeypatch
):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    assert main(audit_argv(tmp_path, tiny_model_path, *extra)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert message in err


def test_a_misspelt_node_in_the_config_file_is_named(tmp_path, outsider, tiny_model_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("omnipod: {alpha: 2.0}\nlocal: {steps: 3}\n")  # local: is another command's node
    assert main(audit_argv(tmp_path, tiny_model_path, "--config", str(config))) == 2
    err = capsys.readouterr().err
    assert "unknown top-level key omnipod; did you mean omniopd?" in err and len(err.strip().splitlines()) == 1
