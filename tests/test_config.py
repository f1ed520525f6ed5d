"""OmniOPDConfig: spec defaults, and a clear error naming key, value and what is allowed for bad input."""

import pytest
from omegaconf import OmegaConf

from omniopd_verl.config import OmniOPDConfig, TeacherConfig
from omniopd_verl.errors import ConfigError


def test_defaults_are_the_spec():
    c = OmniOPDConfig()
    assert (c.chunks, c.samples, c.chunk_len, c.alpha, c.beta) == (10, 10, 50, 1.0, 0.1)
    assert (c.scheduler, c.similarity, c.loss_agg_mode, c.task_reward_weight) == (
        "peak_entropy",
        "embedding",
        "seq-mean-token-sum",
        0.0,
    )
    assert (c.teacher.temperature, c.teacher.top_p) == (1.0, 1.0)
    assert (c.kl_anchor, c.kl_topk) == ("low_var_kl", 64)  # verl's cheaper anchor stays the default


def test_from_omegaconf_nested():
    node = OmegaConf.create({"chunks": 3, "alpha": 2, "teacher": {"name": "litellm", "model": "anthropic/x"}})
    c = OmniOPDConfig.from_dict(node)
    assert c.chunks == 3 and c.alpha == 2 and isinstance(c.teacher, TeacherConfig)
    assert c.teacher.name == "litellm" and c.teacher.model == "anthropic/x"
    assert OmniOPDConfig.from_dict(c.to_dict()) == c


BAD = [
    ({"chunks": 0}, "omniopd.chunks=0", "integer >= 1"),
    ({"samples": -1}, "omniopd.samples=-1", "integer >= 1"),
    ({"chunk_len": 2.5}, "omniopd.chunk_len=2.5", "integer >= 1"),
    ({"chunks": True}, "omniopd.chunks=True", "integer >= 1"),
    ({"alpha": 0.0}, "omniopd.alpha=0.0", "> 0.0"),
    ({"alpha": float("nan")}, "omniopd.alpha=nan", "finite number"),
    ({"beta": -0.1}, "omniopd.beta=-0.1", ">= 0.0"),
    ({"entropy_source": "approx"}, "omniopd.entropy_source='approx'", "rollout_topk"),
    ({"advantage": "x"}, "omniopd.advantage='x'", "centered_prior"),
    ({"loss_agg_mode": "mean"}, "omniopd.loss_agg_mode='mean'", "seq-mean-token-sum"),
    ({"task_reward_weight": -1}, "omniopd.task_reward_weight=-1", ">= 0.0"),
    ({"rollout_topk": 0}, "omniopd.rollout_topk=0", "integer >= 1"),
    ({"kl_anchor": "k3"}, "omniopd.kl_anchor='k3'", "['low_var_kl', 'topk_ref']"),
    ({"kl_topk": 0}, "omniopd.kl_topk=0", "integer >= 1"),
    ({"seed": "a"}, "omniopd.seed='a'", "an integer"),
    ({"similarity_options": []}, "omniopd.similarity_options=[]", "mapping"),
    ({"teacher": {"top_p": 0.0}}, "omniopd.teacher.top_p=0.0", "> 0.0 and <= 1.0"),
    ({"teacher": {"temperature": -1}}, "omniopd.teacher.temperature=-1", ">= 0.0"),
    ({"teacher": {"max_concurrency": 0}}, "omniopd.teacher.max_concurrency=0", "integer >= 1"),
    ({"teacher": {"max_retries": -1}}, "omniopd.teacher.max_retries=-1", "integer >= 0"),
    ({"teacher": {"timeout_s": 0}}, "omniopd.teacher.timeout_s=0", "> 0.0"),
    ({"teacher": {"on_failure": "skip"}}, "omniopd.teacher.on_failure='skip'", "['error', 'drop']"),
    ({"teacher": {"max_cost_usd": 0}}, "omniopd.teacher.max_cost_usd=0", "> 0.0"),
    ({"teacher": {"requests_per_minute": -5}}, "omniopd.teacher.requests_per_minute=-5", "> 0.0"),
    ({"teacher": {"model": ""}}, "omniopd.teacher.model=''", "non-empty string"),
    ({"teacher": "litellm"}, "omniopd.teacher='litellm'", "mapping"),
]


@pytest.mark.parametrize(("data", "key_and_value", "allowed"), BAD)
def test_bad_values_name_key_value_and_allowed(data, key_and_value, allowed):
    with pytest.raises(ConfigError) as err:
        OmniOPDConfig.from_dict(data)
    assert key_and_value in str(err.value)
    assert allowed in str(err.value)


PLUGIN_NAMES = [
    ({"scheduler": "nope"}, "omniopd.scheduler='nope'", "peak_entropy"),
    ({"similarity": "cosine"}, "omniopd.similarity='cosine'", "rouge_l"),
    ({"teacher": {"name": "gpt"}}, "omniopd.teacher.name='gpt'", "openai_completions"),
]


@pytest.mark.parametrize(("data", "key_and_value", "allowed"), PLUGIN_NAMES)
def test_unknown_plugin_names_are_checked_where_runs_are_built(data, key_and_value, allowed):
    from omniopd_verl import registry
    from omniopd_verl.engines import check_engine_support

    config = OmniOPDConfig.from_dict(data)  # plain data: a name is only checked for being a string
    for check in (registry.check_plugin_names, lambda c: check_engine_support(c, "local")):
        with pytest.raises(ConfigError) as err:
            check(config)
        assert key_and_value in str(err.value) and "is not an installed" in str(err.value)
        assert allowed in str(err.value)
    with pytest.raises(ConfigError, match="omniopd.similarity=''"):
        OmniOPDConfig.from_dict({"similarity": ""})


def test_unknown_keys_are_errors():
    with pytest.raises(ConfigError, match=r"unknown key omniopd.chunk_size; did you mean chunks\?"):
        OmniOPDConfig.from_dict({"chunk_size": 4})
    with pytest.raises(ConfigError, match=r"unknown key omniopd.teacher.url; allowed keys: \['name'"):
        OmniOPDConfig.from_dict({"teacher": {"url": "x"}})
