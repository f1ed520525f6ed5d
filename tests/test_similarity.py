"""Similarity built-ins against naive references; the real MiniLM model ranks a paraphrase first."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omniopd_naive import levenshtein

from omniopd_verl import registry
from omniopd_verl.similarity.rouge_l import rouge_tokens


def naive_lcs(x, y):
    dp = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(len(x)):
        for j in range(len(y)):
            dp[i + 1][j + 1] = dp[i][j] + 1 if x[i] == y[j] else max(dp[i][j + 1], dp[i + 1][j])
    return dp[-1][-1]


texts = st.text(alphabet="ab c+=1.", max_size=25)


@settings(max_examples=200, deadline=None)
@given(a=texts, b=texts)
def test_ned_is_the_spec_formula(a, b):
    got = registry.create("similarity", "ned").score([(a, b)])[0]
    if not a and not b:
        assert got == 1.0
    else:
        assert got == pytest.approx(1 - levenshtein(a, b) / max(len(a), len(b)))


@settings(max_examples=200, deadline=None)
@given(a=texts, b=texts)
def test_rouge_l_is_lcs_f1(a, b):
    got = registry.create("similarity", "rouge_l").score([(a, b)])[0]
    ta, tb = rouge_tokens(a), rouge_tokens(b)
    if not ta and not tb:
        assert got == 1.0
        return
    lcs = naive_lcs(ta, tb)
    expected = 0.0 if lcs == 0 else 2 * (lcs / len(tb)) * (lcs / len(ta)) / (lcs / len(tb) + lcs / len(ta))
    assert got == pytest.approx(expected)
    assert 0.0 <= got <= 1.0


def test_rouge_hand_worked():
    # "the cat sat" vs "the cat ran away": LCS 2, P = 2/4, R = 2/3, F1 = 4/7
    assert registry.create("similarity", "rouge_l").score([("the cat sat", "The cat ran away")])[0] == pytest.approx(
        4 / 7
    )
    assert rouge_tokens("x+1=3") == ["x", "+", "1", "=", "3"]


@pytest.fixture(scope="module")
def embedding():
    return registry.create("similarity", "embedding")


def test_embedding_ranks_paraphrase_above_unrelated(embedding):
    a = "The total cost is 12 dollars, since 3 apples cost 4 dollars each."
    para = "Three apples at four dollars apiece come to twelve dollars in total."
    unrelated = "The river flooded the valley after a week of heavy rain."
    s_para, s_unrel, s_self = embedding.score([(a, para), (a, unrelated), (a, a)])
    assert s_para > s_unrel + 0.2
    assert s_self == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= s <= 1.0 for s in (s_para, s_unrel))


def test_embedding_deduplicates_and_matches_direct_cosine(embedding, monkeypatch):
    calls = []
    real_embed = embedding.embed

    def counting_embed(texts):
        calls.append(list(texts))
        return real_embed(texts)

    monkeypatch.setattr(embedding, "embed", counting_embed)
    pairs = [("x = 2 + 3", "five"), ("x = 2 + 3", "x equals five"), ("x = 2 + 3", "five"), ("", "")]
    got = embedding.score(pairs)
    assert len(calls) == 1 and sorted(calls[0]) == sorted({"x = 2 + 3", "five", "x equals five"})
    e = real_embed(["x = 2 + 3", "five", "x equals five"])
    assert got[0] == pytest.approx(max(0.0, float(e[0] @ e[1])), abs=1e-5)
    assert got[1] == pytest.approx(max(0.0, float(e[0] @ e[2])), abs=1e-5)
    assert got[2] == got[0] and got[3] == 1.0
