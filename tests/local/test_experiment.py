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


def test_a_rerun_reads_finished_arms_in_any_split_and_reruns_an_arm_whose_overrides_changed(
    experiment_run, monkeypatch, capsys
):
    """Arms run as separate processes (make experiment splits seed 2 over two) and a final run aggregates
    them: a run must train nothing for arms it has with the same overrides, give the same numbers from any
    subset of them, and rerun an arm whose overrides or evaluation steps changed."""
    import omniopd_verl.local.train as local_train
    from omniopd_verl.demo import experiment

    rc, out, _ = experiment_run
    first = json.loads((out / "results.json").read_text())
    overrides = first["meta"]["overrides"][len(experiment.DEFAULTS) :]

    class Reran(Exception):
        pass

    def no_training(cfg):
        raise Reran(cfg.local.output_dir)

    monkeypatch.setattr(local_train, "LocalTrainer", no_training)
    args = ["--eval-every", "1", *overrides]
    assert experiment.main(["--arms", "centered,seqkd,token_opd,control", "--seeds", "0,5", *args]) == 0
    second = json.loads((out / "results.json").read_text())
    assert second["arms"] == first["arms"] and second["per_seed"] == first["per_seed"]
    assert "seed 0, arm centered: read from" in capsys.readouterr().out

    # a subset, as a process of a split run would leave it: the same per-arm numbers, the control difference too
    assert experiment.main(["--arms", "token_opd,control", "--seeds", "5", *args]) == 0
    subset = json.loads((out / "results.json").read_text())
    assert subset["per_seed"]["5"] == {k: first["per_seed"]["5"][k] for k in ("token_opd", "control")}

    with pytest.raises(Reran):  # another --eval-every: the curve would differ
        experiment.main(["--arms", "centered", "--seeds", "0", *overrides])
    assert "other overrides or --eval-every" in capsys.readouterr().out
    with pytest.raises(Reran):
        experiment.main(["--arms", "centered", "--seeds", "0", *args, "local.lr=1e-6"])


def test_a_seed_split_over_two_runs_gives_the_numbers_of_one_run(experiment_run, tmp_path, monkeypatch):
    """make experiment splits seed 2's arms over two processes, each building the seed's held-out set with its
    own first arm: the second half (started with the control) must build the same set, and the aggregate must
    equal the one-run results (wall times aside)."""
    from omniopd_verl.demo import experiment

    rc, out, _ = experiment_run
    first = json.loads((out / "results.json").read_text())
    overrides = first["meta"]["overrides"][len(experiment.DEFAULTS) :]
    monkeypatch.setattr(experiment, "OUT", tmp_path / "split")
    args = ["--seeds", "5", "--eval-every", "1", *overrides]
    assert experiment.main(["--arms", "centered,seqkd", *args]) == 0
    assert experiment.main(["--arms", "control,token_opd", *args]) == 0
    assert experiment.main(["--arms", "centered,seqkd,token_opd,control", *args]) == 0
    split = json.loads((tmp_path / "split" / "results.json").read_text())["per_seed"]["5"]
    one = first["per_seed"]["5"]
    assert list(split) == list(one)
    for name in one:
        assert {k: v for k, v in split[name].items() if k != "seconds"} == {
            k: v for k, v in one[name].items() if k != "seconds"
        }


def test_arms_scored_on_different_heldout_sets_are_refused(experiment_run):
    """The control difference pairs arms by prefix: arms of one seed saved from different held-out sets (e.g.
    a process that ran other code) must not be compared."""
    from omniopd_verl.demo import experiment

    rc, out, _ = experiment_run
    overrides = json.loads((out / "results.json").read_text())["meta"]["overrides"][len(experiment.DEFAULTS) :]
    saved = out / "seed0" / "seqkd" / "arm_result.json"
    record = json.loads(saved.read_text())
    record["heldout_digest"] = "0" * 16
    saved.write_text(json.dumps(record))
    with pytest.raises(RuntimeError, match="seed 0: the arms were scored on different held-out sets"):
        experiment.main(["--arms", "centered,seqkd,token_opd,control", "--seeds", "0", "--eval-every", "1", *overrides])


def test_experiment_rejects_an_unknown_arm_and_names_the_allowed_ones(capsys):
    from omniopd_verl.demo import experiment

    assert experiment.main(["--arms", "centered,dpo"]) == 2
    err = capsys.readouterr().err
    assert "['dpo']" in err and "token_opd" in err and "seqkd" in err and "control" in err
    assert experiment.main(["--seeds", "1,1"]) == 2
    assert "--seeds '1,1' is invalid: allowed distinct integers" in capsys.readouterr().err
    assert experiment.main(["--eval-every", "-2"]) == 2
    assert "--eval-every -2 is invalid: allowed 0 (only at the end) or a step count" in capsys.readouterr().err
