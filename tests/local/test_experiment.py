"""`make experiment` (omniopd_verl/demo/experiment.py) end to end on the tiny random model: three arms of the
quickstart recipe, one shared held-out set, the table, the plot, and numbers recomputed here from each
arm's own eval.json by a naive per-prompt average (so a wrong pairing, sign or arm would show).
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest


def naive_per_prompt_mean(prompt_ids, values):
    groups = defaultdict(list)
    for pid, v in zip(prompt_ids, values, strict=True):
        groups[pid].append(v)
    return sum(sum(v) / len(v) for v in groups.values()) / len(groups)


@pytest.fixture
def experiment_run(tmp_path, tiny_model_path, monkeypatch):
    from omniopd_verl.demo import experiment

    monkeypatch.setattr(experiment, "OUT", tmp_path / "exp")
    overrides = [
        f"local.model={tiny_model_path}",
        f"omniopd.teacher.model={tiny_model_path}",
        "omniopd.similarity=ned",
        "omniopd.samples=2",
        "omniopd.chunk_len=4",
        "local.steps=2",
        "local.prompts_per_step=2",
        "local.responses_per_prompt=2",
        "local.micro_batch_size=2",
        "local.max_new_tokens=12",
        "local.progress=false",
        "local.data.heldout_prompts=3",  # given after the experiment's default of 40, so it wins
    ]
    docs = tmp_path / "docs"
    rc = experiment.main(
        ["--arms", "centered,seqkd,token_opd,control", "--seeds", "0,5", "--eval-every", "1", "--docs", str(docs)]
        + overrides
    )
    return rc, tmp_path / "exp", docs


def test_experiment_scores_every_arm_on_one_heldout_set_per_seed_and_matches_a_naive_recomputation(experiment_run):
    rc, out, docs = experiment_run
    assert rc == 0
    report = json.loads((out / "results.json").read_text())
    arms, meta, per_seed = report["arms"], report["meta"], report["per_seed"]
    assert list(arms) == ["centered", "seqkd", "token_opd", "control"] and meta["seeds"] == [0, 5]
    assert meta["overrides"][0] == "local.data.heldout_prompts=40"
    assert meta["overrides"][-1] == "local.data.heldout_prompts=3" and meta["prompts"] <= 3

    effects = defaultdict(list)
    minus = defaultdict(list)
    sets = []
    for seed in ("0", "5"):
        folder = out / f"seed{seed}"
        shared = [json.loads(line) for line in (folder / "heldout_set.jsonl").read_text().splitlines()]
        sets.append(shared)
        prompt_ids = [it["prompt_id"] for it in shared]
        after = {}
        for name, r in per_seed[seed].items():
            # every arm of a seed saved (and was scored on) exactly that seed's held-out set
            own = [json.loads(line) for line in (folder / name / "heldout_set.jsonl").read_text().splitlines()]
            assert own == shared
            evals = json.loads((folder / name / "eval.json").read_text())
            before, after[name] = evals["before"]["mass"], evals["paired"]["after"]["mass"]
            diffs = [a - b for a, b in zip(after[name], before, strict=True)]
            assert r["effect"] == pytest.approx(naive_per_prompt_mean(prompt_ids, diffs), abs=1e-12)
            assert r["ci95"][0] <= r["effect"] <= r["ci95"][1]
            # the curve: step 1 from the on_step hook, step 2 = fit()'s final evaluation
            assert [p["step"] for p in r["curve"]] == [1, 2] and r["curve"][-1]["effect"] == r["effect"]
            effects[name].append(r["effect"])
        for name in ("centered", "seqkd", "token_opd"):
            diffs = [a - c for a, c in zip(after[name], after["control"], strict=True)]
            m = per_seed[seed][name]["minus_control"]["effect"]
            assert m == pytest.approx(naive_per_prompt_mean(prompt_ids, diffs), abs=1e-12)
            minus[name].append(m)
        assert "minus_control" not in per_seed[seed]["control"]
        # OmniOPD and SeqKD ask the teacher for text; token-level OPD reads its logits, no samples
        assert per_seed[seed]["centered"]["teacher_calls"] > 0 and per_seed[seed]["seqkd"]["teacher_calls"] == 2 * 2
        # SeqKD at (at least) equal teacher completion tokens: ceil(M*N*C*rpp / max_new_tokens) answers per prompt
        assert per_seed[seed]["seqkd"]["overrides"] == ["local.method=seqkd", "local.responses_per_prompt=3"]
    assert sets[0] != sets[1]  # each seed builds its own held-out set
    for name, a in arms.items():  # across seeds: naive mean and sample sd, t CI with 1 degree of freedom
        vals = effects[name]
        mean, sd = sum(vals) / 2, abs(vals[0] - vals[1]) / 2**0.5
        assert a["primary"]["mean"] == pytest.approx(mean, abs=1e-12) and a["primary"]["sd"] == pytest.approx(sd)
        assert a["primary"]["ci95"] == pytest.approx([mean - 12.706 * sd / 2**0.5, mean + 12.706 * sd / 2**0.5])
        if name != "control":
            assert a["minus_control"]["mean"] == pytest.approx(sum(minus[name]) / 2, abs=1e-12)

    table = (docs / "experiment_cpu_small.md").read_text()
    assert table == (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| arm")]
    assert [row.split("|")[1].strip() for row in rows] == ["centered", "seqkd", "token_opd", "control"]
    assert (docs / "experiment_cpu_small.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_reads_finished_seeds_and_reruns_a_seed_whose_arms_changed(experiment_run, monkeypatch, capsys):
    """Seeds run as separate processes and a final run aggregates them: the second run must train nothing
    for seeds it has with the same arms and overrides, and give the same table; other arms rerun the seed."""
    from omniopd_verl.demo import experiment

    rc, out, _ = experiment_run
    first = json.loads((out / "results.json").read_text())
    overrides = first["meta"]["overrides"][len(experiment.DEFAULTS) :]
    ran = []

    class Reran(Exception):
        pass

    def run_seed(seed, *args, **kwargs):
        ran.append(seed)
        raise Reran

    monkeypatch.setattr(experiment, "run_seed", run_seed)
    assert experiment.main(["--arms", "centered,seqkd,token_opd,control", "--seeds", "0,5", *overrides]) == 0
    second = json.loads((out / "results.json").read_text())
    assert ran == [] and second["arms"] == first["arms"] and second["per_seed"] == first["per_seed"]
    assert "seed 0: read from" in capsys.readouterr().out

    with pytest.raises(Reran):
        experiment.main(["--arms", "centered,control", "--seeds", "0", *overrides])
    assert ran == [0] and "other arms or overrides" in capsys.readouterr().out


def test_experiment_rejects_an_unknown_arm_and_names_the_allowed_ones(capsys):
    from omniopd_verl.demo import experiment

    assert experiment.main(["--arms", "centered,dpo"]) == 2
    err = capsys.readouterr().err
    assert "['dpo']" in err and "token_opd" in err and "seqkd" in err and "control" in err
    assert experiment.main(["--seeds", "1,1"]) == 2
    assert "--seeds '1,1' is invalid: allowed distinct integers" in capsys.readouterr().err
