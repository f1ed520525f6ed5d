"""The `verl.plugins` entry point, in fresh interpreters: `import verl` alone registers OmniOPD, and a
broken install fails loudly (verl 0.9.1 itself swallows plugin import errors at DEBUG level).
(The same lookup inside a fresh Ray worker is in test_audit_in_verl.py, which owns the Ray session.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=240)


def test_import_verl_alone_registers_estimator_and_reward_manager_in_the_driver():
    out = run_python(
        """
        import json, sys
        import verl
        from verl.trainer.ppo.core_algos import get_adv_estimator_fn
        from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
        fn, cls = get_adv_estimator_fn("omniopd"), get_reward_manager_cls("omniopd")
        print(json.dumps([fn.__module__ + "." + fn.__name__, cls.__module__ + "." + cls.__name__,
                          "omniopd_verl.verl_integration.agent_loop" in sys.modules]))
        """
    )
    assert out.returncode == 0, out.stderr[-2000:]
    est, manager, agent_loop_imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert est == "omniopd_verl.verl_integration.estimator.omniopd_adv_estimator"
    assert manager == "omniopd_verl.verl_integration.reward_manager.OmniOPDRewardManager"
    assert agent_loop_imported is False  # import verl stays light: the agent loop loads in its workers only


def test_a_broken_install_fails_loudly_with_its_cause():
    out = run_python(
        """
        import json, sys
        sys.modules["omniopd_verl.verl_integration.estimator"] = None  # simulate a broken install
        import verl  # verl swallows the plugin's exception (DEBUG level)
        from omegaconf import OmegaConf
        from omniopd_verl.errors import PluginError
        from omniopd_verl.verl_integration.plugin import self_check
        found = []
        try:
            self_check()
        except PluginError as exc:
            found.append(str(exc))
        try:  # the shipped YAML cannot even be resolved in such a process
            OmegaConf.to_container(OmegaConf.create({"p": "${omniopd_verl.resource:agent_loops.yaml}"}), resolve=True)
        except Exception as exc:
            found.append(str(exc))
        print(json.dumps(found))
        """
    )
    assert out.returncode == 0, out.stderr[-2000:]
    errors = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(errors) == 2
    for message in errors:
        assert "OmniOPD is not registered" in message and "ModuleNotFoundError" in message
        assert "advantage estimator 'omniopd' is not registered" in message
    assert "OmniOPD failed to register its verl plugin" in out.stderr  # logged at ERROR in every process


def test_a_package_that_fails_to_import_is_reported_with_its_cause(tmp_path):
    """Issue 10 item 5: the entry module lives outside the package, so a shadowed / broken `omniopd_verl`
    is logged at ERROR with its cause, and asking verl for `omniopd` raises with that cause."""
    shadow = tmp_path / "omniopd_verl"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('shadowed on purpose by the test')\n")
    code = textwrap.dedent(
        """
        import verl
        from verl.trainer.ppo.core_algos import get_adv_estimator_fn
        from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
        messages = []
        for lookup in (lambda: get_adv_estimator_fn("omniopd")(None, None), lambda: get_reward_manager_cls("omniopd")(None, None)):
            try:
                lookup()
            except RuntimeError as exc:
                messages.append(str(exc))
        print("MESSAGES", messages)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "omniopd-verl failed to import" in out.stderr and "shadowed on purpose by the test" in out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("MESSAGES"))
    assert line.count("shadowed on purpose by the test") == 2, line
