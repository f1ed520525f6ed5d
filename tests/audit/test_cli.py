"""`omniopd-verl audit` end to end on CPU: the built-in SmolLM2 student, an `openai_completions` teacher
served over real HTTP on 127.0.0.1 (the project's OpenAI-compatible server with a local model behind
it), the real `ned` similarity. The output is checked against values computed independently here:
entropies and log-probs from a naive float64 forward, anchors from a naive peak-entropy greedy,
similarities from a naive Levenshtein, k_sem, pi_bar and pi_hat from their formulas.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from omniopd_naive import naive_ned, naive_peak_anchors

from omniopd_verl.cli.main import main
from omniopd_verl.runtime.models import load_causal_lm
from omniopd_verl.serving.openai_compat import TransformersGenerator
from omniopd_verl.testing import serve_recording_server

M, N, C, ALPHA = 3, 3, 10, 2.0


def naive_scores(model, prompt_ids, response_ids):
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    lps, hs = [], []
    for j, tok in enumerate(response_ids):
        p = torch.softmax(logits[len(prompt_ids) + j - 1], dim=-1)
        lps.append(math.log(p[tok].item()))
        hs.append(-(p * torch.log(p)).sum().item())
    return lps, hs


@pytest.fixture(scope="module")
def rows(gsm8k_subset):
    out = []
    with open(gsm8k_subset / "test.jsonl") as f:
        for i, line in zip(range(2), f, strict=False):
            d = json.loads(line)
            answer = d["answer"].split("####")[0].replace("<<", "").replace(">>", " ").strip()
            out.append({"id": f"gsm8k-{i}", "prompt": [{"role": "user", "content": d["question"]}], "response": answer})
    # a raw-string prompt, and HTML in the response: the report must escape it
    out.append({"id": 7, "prompt": "Q: 2+2?\nA:", "response": " <script>alert('x')</script> It is 4 & that is all."})
    out.append({"id": "short", "prompt": "Say hi.", "response": " Hi"})  # shorter than C: no audit
    return out


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def teacher_server(tiny_model_path):
    with serve_recording_server(generator=TransformersGenerator(tiny_model_path)) as server:
        yield server


def run_audit(tmp_path, inp, server, *extra):
    out, report = tmp_path / "out.jsonl", tmp_path / "report.html"
    argv = [
        "audit",
        "--input",
        str(inp),
        "--output",
        str(out),
        "--student",
        "smollm2-135m-instruct",
        "--teacher",
        "openai_completions",
        "--teacher-model",
        "local-teacher",
        "--teacher-api-base",
        server.url,
        "--similarity",
        "ned",
        "--chunks",
        str(M),
        "--samples",
        str(N),
        "--chunk-len",
        str(C),
        "--alpha",
        str(ALPHA),
        "--seed",
        "3",
        "--report",
        str(report),
        *extra,
    ]
    code = main(argv)
    return code, out, report


def test_audit_cli_end_to_end(tmp_path, rows, teacher_server, smollm2_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    cache = tmp_path / "teacher.sqlite"
    calls_before = teacher_server.calls("/v1/completions")
    code, out, report = run_audit(tmp_path, inp, teacher_server, "--cache", str(cache))
    err = capsys.readouterr().err
    assert code == 0, err
    assert "omniopd-verl audit summary" in err and "audit:" in err  # summary and progress bar on stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["gsm8k-0", "gsm8k-1", "7", "short"]

    model, tok = load_causal_lm(smollm2_path)
    n_chunks = 0
    for row, rec in zip(rows, records, strict=True):
        prompt = row["prompt"]
        prompt_text = (
            prompt
            if isinstance(prompt, str)
            else tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        )
        p_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
        r_ids = tok(row["response"], add_special_tokens=False)["input_ids"]
        lps, hs = naive_scores(model, p_ids, r_ids)
        assert rec["entropy_source"] == "exact" and rec["similarity"] == "ned" and rec["response_len"] == len(r_ids)
        assert [c["start"] for c in rec["chunks"]] == naive_peak_anchors(hs, len(r_ids), M, C)
        assert rec["teacher"]["requests"] == len(rec["chunks"]) and rec["teacher"]["failures"] == 0
        for c in rec["chunks"]:
            n_chunks += 1
            assert c["end"] == c["start"] + C
            assert c["entropy"] == pytest.approx(hs[c["start"]], abs=1e-3)
            assert c["student_text"] == tok.decode(r_ids[c["start"] : c["end"]])
            assert len(c["teacher_texts"]) == N
            for t in c["teacher_texts"]:
                assert len(tok(t, add_special_tokens=False)["input_ids"]) <= C
            sims = [naive_ned(c["student_text"], t) for t in c["teacher_texts"]]
            assert c["similarities"] == pytest.approx(sims, abs=1e-12)
            assert c["k_sem"] == pytest.approx(sum(c["similarities"]), abs=1e-12)
            prior = math.exp(sum(lps[c["start"] : c["end"]]) / C)
            assert c["pi_bar"] == pytest.approx(prior, rel=1e-3)
            assert c["pi_hat"] == pytest.approx((c["k_sem"] + ALPHA * c["pi_bar"]) / (N + ALPHA), rel=1e-12)
            # the teacher saw exactly the prompt + the response prefix, never the chunk
            prefix = prompt_text + tok.decode(r_ids[: c["start"]])
            assert any((req.body or {}).get("prompt") == prefix for req in teacher_server.requests)  # GET: no body
    assert records[3]["chunks"] == [] and records[0]["chunks"]
    assert teacher_server.calls("/v1/completions") - calls_before >= n_chunks

    html = report.read_text()
    assert html.startswith("<!DOCTYPE html>") and "gsm8k-0" in html
    # the response's HTML is escaped (a chunk boundary may fall inside it, so check the pieces)
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;/script&gt;" in html
    assert "http://" not in html and "https://" not in html  # self-contained: no external assets

    # a rerun with the cache answers every anchor from the cache: no HTTP call, identical output
    calls_mid = teacher_server.calls("/v1/completions")
    code, out2, _ = run_audit(tmp_path, inp, teacher_server, "--cache", str(cache))
    assert code == 0
    records2 = [json.loads(line) for line in out2.read_text().splitlines()]
    assert teacher_server.calls("/v1/completions") == calls_mid
    assert [r["chunks"] for r in records2] == [r["chunks"] for r in records]
    assert sum(r["teacher"]["cache_hits"] for r in records2) == n_chunks


def audit_argv(inp, out, *flags: str) -> list[str]:
    """`omniopd-verl audit` with the built-in student and an openai_completions teacher, plus `flags`."""
    return [
        "audit",
        "--input",
        str(inp),
        "--output",
        str(out),
        "--student",
        "smollm2-135m-instruct",
        "--teacher",
        "openai_completions",
        *flags,
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--chunks", "0"], "omniopd.chunks=0 is invalid: allowed an integer >= 1"),
        (["--alpha", "-1"], "omniopd.alpha=-1.0 is invalid"),
        (["--similarity", "cosine"], "omniopd.similarity='cosine' is not an installed similarity plugin"),
        (["--teacher-option", "novalue"], "--teacher-option 'novalue' is invalid: allowed KEY=VALUE"),
        ([], "api_base=None are invalid for the openai_completions teacher"),  # from the teacher plugin
    ],
)
def test_bad_flags_exit_2_with_the_config_message(tmp_path, rows, flags, message, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", rows[:1])
    assert main(audit_argv(inp, tmp_path / "o.jsonl", *flags)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": 1, "prompt": "p"}\n', "line 1 has no 'response'"),
        ('{"id": 1, "prompt": "p", "response": "r"}\nnot json\n', "line 2 is not JSON"),
        ('{"id": 1, "prompt": "p", "response": "r"}\n{"id": "1", "prompt": "p", "response": "r"}\n', "appears twice"),
        ('{"id": 1, "prompt": [{"role": "user"}], "response": "r"}\n', "prompt is invalid"),
    ],
)
def test_bad_input_lines_are_named(tmp_path, content, message, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(content)
    assert main(audit_argv(inp, tmp_path / "o.jsonl")) == 2
    err = capsys.readouterr().err
    assert message in err and str(inp) in err and "Traceback" not in err
