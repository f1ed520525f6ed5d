"""The teacher cost forecast (teachers/forecast.py) from a verl config: the rules, computed independently.

The check against a real run's spend is tests/verl/test_main_ppo_cpu.py (slow)."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from omniopd_verl.config import OmniOPDConfig
from omniopd_verl.teachers.accounting import CHAT_OVERHEAD_TOKENS
from omniopd_verl.teachers.forecast import data_prompt_tokens, verl_forecast

PRICE_IN, PRICE_OUT = 0.001, 0.002


def verl_cfg(model: str, data: str, **over):
    cfg = {
        "data": {"train_files": data, "train_batch_size": 3, "max_prompt_length": 64, "max_response_length": 20},
        "actor_rollout_ref": {"model": {"path": model}, "rollout": {"n": 2}},
        "trainer": {"total_training_steps": 5},
    }
    return OmegaConf.merge(OmegaConf.create(cfg), OmegaConf.create(over))


def omniopd(name: str = "openai_completions", **teacher) -> OmniOPDConfig:
    options = {"input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT}
    return OmniOPDConfig.from_dict(
        {
            "chunks": 3,
            "samples": 4,
            "chunk_len": 6,
            "teacher": {"name": name, "model": "m", "options": options, **teacher},
        }
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from omniopd_verl.verl_integration.cpu.smoke import prepare

    return prepare(tmp_path_factory.mktemp("forecast"))


def test_prompt_length_is_measured_from_the_data_with_the_chat_template(smoke):
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    model, data = smoke
    tok = AutoTokenizer.from_pretrained(model)
    rows = pq.read_table(data).column("prompt").to_pylist()
    # independently: verl's RLHFDataset renders the messages with the generation prompt, then tokenizes
    expected = [
        len(
            tok.encode(tok.apply_chat_template(r, add_generation_prompt=True, tokenize=False), add_special_tokens=False)
        )
        for r in rows
    ]
    mean, source = data_prompt_tokens(verl_cfg(model, data))
    assert mean == round(sum(expected) / len(expected)) and 20 < mean < 64
    assert f"mean of {len(rows)} prompts" in source


def test_raw_completion_forecast_from_a_verl_config(smoke):
    model, data = smoke
    mean, _ = data_prompt_tokens(verl_cfg(model, data))
    f = verl_forecast(verl_cfg(model, data), omniopd(max_cost_usd=1.0))
    anchors = min(3, 20 // 6)  # 3
    requests = 3 * 2 * anchors  # one call (n = N) per anchor
    input_per_call = mean + (20 - 6) // 2  # raw completion: no chat template overhead
    output_per_call = 4 * math.ceil(6 * 1.25)
    assert (f.requests_per_step, f.input_tokens_per_step, f.output_tokens_per_step) == (
        requests,
        requests * input_per_call,
        requests * output_per_call,
    )
    assert f.usd_per_step == pytest.approx(requests * (input_per_call * PRICE_IN + output_per_call * PRICE_OUT))
    assert f.usd_per_run == pytest.approx(5 * f.usd_per_step)
    lines = "\n".join(f.lines())
    assert "prompt length from" in lines and f"{mean} tokens" in lines
    covered = int(1.0 // f.usd_per_step)
    assert "max_cost_usd=$1 cannot cover trainer.total_training_steps=5" in lines and f"about {covered} steps" in lines


def test_unreadable_data_falls_back_to_max_prompt_length_and_says_so(tmp_path):
    cfg = verl_cfg(str(tmp_path / "no_model"), str(tmp_path / "no_data.parquet"))
    f = verl_forecast(cfg, omniopd(name="litellm", options={"input_cost_per_token": PRICE_IN}))
    # litellm is a chat teacher: N single-sample calls per anchor unless it takes n, plus the template's overhead
    per_call_input = 64 + (20 - 6) // 2 + CHAT_OVERHEAD_TOKENS
    assert f.input_tokens_per_step == f.requests_per_step * per_call_input
    assert "data.max_prompt_length=64 (the data or tokenizer is not readable here: an upper estimate)" in "\n".join(
        f.lines()
    )
