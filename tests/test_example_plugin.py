"""The separately installed example plugin is discovered through installed metadata and works end to end."""

from importlib.metadata import distribution

import torch

from omniopd_verl import registry
from omniopd_verl.config import OmniOPDConfig
from omniopd_verl.core import check_anchors


def test_example_plugin_is_installed_as_its_own_distribution():
    dist = distribution("omniopd-example-plugin")
    groups = {(ep.group, ep.name) for ep in dist.entry_points}
    assert ("omniopd_verl.similarity", "jaccard") in groups
    assert ("omniopd_verl.schedulers", "tail_first") in groups


def test_example_plugins_load_and_compute():
    assert "jaccard" in registry.available("similarity")
    jac = registry.create("similarity", "jaccard")
    # {a, b, c} vs {b, c, d}: 2 / 4
    assert jac.score([("a b c", "B c d"), ("", "")]) == [0.5, 1.0]
    sched = registry.create("schedulers", "tail_first")
    anchors = sched.select(torch.zeros(23), 23, 2, 5, seed=0)
    assert anchors == [13, 18]
    check_anchors(anchors, 23, 5, 2)


def test_config_accepts_third_party_names():
    c = OmniOPDConfig(similarity="jaccard", scheduler="tail_first")
    assert (c.similarity, c.scheduler) == ("jaccard", "tail_first")


# ------------------------------------------------------------------------------------------ the teacher
# Only public names: a third-party teacher written as a raw call gets the whole teacher library.

import asyncio  # noqa: E402

import pytest  # noqa: E402

from omniopd_verl.audit import Auditor, StudentResponse, TeacherFailureError  # noqa: E402
from omniopd_verl.config import TeacherConfig  # noqa: E402
from omniopd_verl.teachers import TeacherBudgetExceeded, TeacherRequest  # noqa: E402

N = 3


def markov(tmp_path=None, **kw):
    options = {"backoff_base_s": 0.01, "backoff_max_s": 0.02, **kw.pop("options", {})}
    cache = {"cache_path": str(tmp_path / "cache.sqlite")} if tmp_path is not None else {}
    return registry.create_teacher(TeacherConfig(name="markov", model="bigram", options=options, **cache, **kw))


def requests(count=4):
    return [
        TeacherRequest(f"r{i}:{i}", f"the cat sat on the mat and the dog sat on the cat {i}", " and", N, 5, seed=i)
        for i in range(count)
    ]


def test_example_teacher_is_installed_and_samples_deterministically():
    assert ("omniopd_verl.teachers", "markov") in {
        (ep.group, ep.name) for ep in distribution("omniopd-example-plugin").entry_points
    }
    first = asyncio.run(markov().sample(requests()))
    again = asyncio.run(markov().sample(requests()))
    assert [r.texts for r in first] == [r.texts for r in again]
    assert all(len(r.texts) == N and all(len(t.split()) == 5 for t in r.texts) for r in first)
    assert len({t for r in first for t in r.texts}) > 1  # samples and seeds differ, texts differ


def test_example_teacher_gets_cache_hits_on_a_rerun(tmp_path):
    first = markov(tmp_path)
    texts = [r.texts for r in asyncio.run(first.sample(requests()))]
    assert first.metrics()["teacher/calls"] == 4 and first.metrics()["teacher/cache_hits"] == 0
    asyncio.run(first.aclose())
    rerun = markov(tmp_path)  # a fresh process would do the same
    results = asyncio.run(rerun.sample(requests()))
    assert [r.texts for r in results] == texts and all(r.cached for r in results)
    assert rerun.metrics()["teacher/calls"] == 0 and rerun.metrics()["teacher/cache_hits"] == 4


def test_example_teacher_gets_retries_on_a_transient_error():
    teacher = markov(max_concurrency=1, options={"fail_first": 2})
    results = asyncio.run(teacher.sample(requests(2)))
    assert all(r.texts is not None and len(r.texts) == N for r in results)
    m = teacher.metrics()
    assert m["teacher/retries"] == 2 and m["teacher/failures"] == 0 and m["teacher/calls"] == 2 + 2
    # out of retries: a counted failure with the cause, never a silent disagreement
    failing = markov(max_retries=1, options={"fail_first": 100})
    [result] = asyncio.run(failing.sample(requests(1)))
    assert result.texts is None and "scripted transient failure" in result.error and "after retries" in result.error
    assert failing.metrics()["teacher/failures"] == 1


def test_example_teacher_gets_a_budget_stop(tmp_path):
    teacher = markov(tmp_path, max_concurrency=1, max_cost_usd=0.025, options={"cost_per_call": 0.01})
    with pytest.raises(TeacherBudgetExceeded, match=r"max_cost_usd=\$0.025"):
        asyncio.run(teacher.sample(requests(6)))
    m = teacher.metrics()
    assert m["teacher/calls"] == 3 and m["teacher/cost_usd"] == pytest.approx(0.03)  # stops at the budget
    more = markov(tmp_path, max_cost_usd=1.0, options={"cost_per_call": 0.01})
    asyncio.run(more.sample(requests(6)))
    assert more.metrics()["teacher/cache_hits"] == 3 and more.metrics()["teacher/calls"] == 3  # paid once


def test_example_teacher_returning_fewer_than_n_samples_is_a_clear_error(tiny_model_path):
    teacher = markov(max_retries=1, options={"missing_samples": 1})
    [result] = asyncio.run(teacher.sample(requests(1)))
    assert result.texts is None
    assert "teacher 'markov' returned 2 samples, asked for 3" in result.error
    assert teacher.metrics()["teacher/retries"] == 1  # retried once, as a short answer from an API would be
    # through the Auditor (on_failure='error'): the run stops naming the teacher, the request and the cause
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    ids = tok("one two three four five six seven eight", add_special_tokens=False)["input_ids"]
    cfg = OmniOPDConfig(
        chunks=1,
        samples=N,
        chunk_len=2,
        scheduler="uniform",
        similarity="jaccard",
        teacher=dict(name="markov", model="bigram", max_retries=0, options={"missing_samples": 1}),
    )
    auditor = Auditor(cfg, tok)
    with pytest.raises(
        TeacherFailureError, match=r"teacher 'markov' failed on r0:0 .* returned 2 samples, asked for 3"
    ):
        asyncio.run(auditor.audit([StudentResponse("r0", "Count:", ids, torch.full((len(ids),), -1.0))]))


def test_example_teacher_end_to_end_through_the_auditor(tiny_model_path, tmp_path):
    """The outsider's teacher audited like a built-in: its samples (trimmed to C student tokens) are what is
    scored, and a rerun comes from the cache."""
    from transformers import AutoTokenizer

    from omniopd_verl.audit import trim_to_student_tokens

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    ids = tok(" the cat sat on the mat and the dog sat on the cat", add_special_tokens=False)["input_ids"]
    response = StudentResponse("r0", "Story: the cat", ids, torch.full((len(ids),), -1.0))
    teacher = dict(name="markov", model="bigram", cache_path=str(tmp_path / "c.sqlite"))
    cfg = OmniOPDConfig(chunks=2, samples=N, chunk_len=3, scheduler="uniform", similarity="jaccard", teacher=teacher)
    auditor = Auditor(cfg, tok)
    [audit] = asyncio.run(auditor.audit([response]))
    assert len(audit.chunks) == 2 and audit.anchors_dropped == 0
    from omniopd_verl.audit import stable_seed
    from omniopd_verl.audit.text import ResponseText

    text = ResponseText(tok, ids)
    expected = asyncio.run(
        markov().sample(
            [TeacherRequest("q", "Story: the cat", text.prefix(c.start), N, 3, seed=stable_seed(0, "r0", c.start))
             for c in audit.chunks]
        )
    )  # fmt: skip
    for c, e in zip(audit.chunks, expected, strict=True):  # exactly the plugin's samples, trimmed to C
        assert c.teacher_texts == [trim_to_student_tokens(tok, t, 3) for t in e.texts]
    again = Auditor(cfg, tok)
    [audit2] = asyncio.run(again.audit([response]))
    assert [c.teacher_texts for c in audit2.chunks] == [c.teacher_texts for c in audit.chunks]
    assert again.metrics()["teacher/cache_hits"] == 2 and again.metrics()["teacher/calls"] == 0
