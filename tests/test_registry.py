"""Plugin registry: built-ins come from installed entry points; unknown or broken plugins fail loudly."""

import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

from omniopd_verl import registry
from omniopd_verl.errors import PluginError
from omniopd_verl.schedulers import PeakEntropyScheduler, Scheduler
from omniopd_verl.similarity import Similarity


def test_builtins_are_registered_through_entry_points():
    assert {"peak_entropy", "uniform", "random", "all"} <= set(registry.available("schedulers"))
    assert {"embedding", "ned", "rouge_l"} <= set(registry.available("similarity"))
    assert {"litellm", "openai_completions", "transformers", "vllm"} <= set(registry.available("teachers"))


def test_load_is_lazy_and_idempotent():
    # a fresh interpreter: listing names must not import the plugin modules (nor torch)
    code = (
        "import sys\nfrom omniopd_verl import registry\n"
        "registry.available('similarity'); registry.available('schedulers')\n"
        "assert 'omniopd_verl.similarity.embedding' not in sys.modules\n"
        "assert 'sentence_transformers' not in sys.modules and 'torch' not in sys.modules\n"
        "a = registry.load('similarity', 'ned'); b = registry.load('similarity', 'ned')\n"
        "assert a is b\nprint('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_create_returns_protocol_instances():
    assert isinstance(registry.create("schedulers", "peak_entropy"), PeakEntropyScheduler)
    assert isinstance(registry.create("schedulers", "uniform"), Scheduler)
    assert isinstance(registry.create("similarity", "rouge_l"), Similarity)


def test_unknown_name_lists_installed():
    with pytest.raises(PluginError) as err:
        registry.load("schedulers", "nope")
    assert "unknown schedulers plugin 'nope'" in str(err.value)
    assert "peak_entropy" in str(err.value) and "uniform" in str(err.value)
    with pytest.raises(PluginError, match="unknown plugin kind 'loss'"):
        registry.available("loss")


def test_broken_plugin_fails_with_its_name_and_cause(monkeypatch):
    broken = EntryPoint(name="broken", value="omniopd_verl_no_such_module:Thing", group="omniopd_verl.schedulers")
    registry.reset()
    found = registry._discover("schedulers")
    monkeypatch.setitem(found, "broken", broken)
    try:
        with pytest.raises(PluginError) as err:
            registry.load("schedulers", "broken")
        msg = str(err.value)
        assert "schedulers plugin 'broken'" in msg and "failed to import" in msg
        assert "ModuleNotFoundError" in msg and "omniopd_verl_no_such_module" in msg
    finally:
        registry.reset()


def test_bad_options_are_reported():
    with pytest.raises(PluginError, match="rejected its options"):
        registry.create("similarity", "ned", model="x")


def test_a_plugin_lacking_its_protocol_method_fails_at_load_naming_both(monkeypatch):
    # a scheduler class registered as a similarity: it has `select`, not `score`
    wrong = EntryPoint(
        name="no_score", value="omniopd_verl.schedulers:UniformScheduler", group="omniopd_verl.similarity"
    )
    registry.reset()
    monkeypatch.setitem(registry._discover("similarity"), "no_score", wrong)
    try:
        with pytest.raises(PluginError, match=r"similarity plugin 'no_score' .* lacks the required method score"):
            registry.load("similarity", "no_score")
    finally:
        registry.reset()


def test_plugins_command_names_the_distribution_and_version_of_each(capsys):
    from importlib.metadata import version

    from omniopd_verl.cli.main import main

    assert main(["plugins", "--load"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert f"from omniopd-verl {version('omniopd-verl')}" in lines["litellm"] and lines["litellm"].endswith("ok")
    assert f"from omniopd-example-plugin {version('omniopd-example-plugin')}" in lines["markov"]
    assert "from omniopd-example-plugin" in lines["jaccard"] and "from omniopd-verl" in lines["peak_entropy"]
