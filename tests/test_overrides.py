"""config/overrides.py: override values and config files read numbers as Hydra and OmegaConf do."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from omniopd_verl.config.overrides import parse_value, read_yaml_mapping

SCALARS = ["1e-2", "1.0e-4", "-3e5", "2", "2.0", "null", "true", "abc", ".inf", "1e5x", "[1, 2]", "{a: 1e-3}"]


@pytest.mark.parametrize("text", SCALARS)
def test_an_override_value_reads_as_omegaconf_reads_it(text):
    """OmegaConf's own YAML reading is the reference (Hydra's overrides agree on these): a learning rate
    typed as `local.lr=1e-5` must be a float, not the string '1e-5' that plain YAML 1.1 makes of it."""
    expected = OmegaConf.to_container(OmegaConf.create(f"v: {text}"))["v"]
    got = parse_value(text)
    assert type(got) is type(expected) and (got == expected or (isinstance(got, float) and math.isnan(got)))


def test_a_config_file_reads_exponent_floats_as_numbers(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("local:\n  lr: 1e-5\n  name: 1e5x\n")
    assert read_yaml_mapping(path) == {"local": {"lr": 1e-5, "name": "1e5x"}}
