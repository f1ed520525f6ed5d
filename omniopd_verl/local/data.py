"""Prompts for the local engine: JSONL problems -> chat-templated prompts, in a seeded, resumable order.

The order of training prompts is a pure function of (seed, step), so a resumed run draws exactly the
prompts an uninterrupted run would have drawn, with no data-loader state to save.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from omniopd_verl import package_files
from omniopd_verl.errors import ConfigError
from omniopd_verl.local.config import DataConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Problem:
    """One prompt: its stable id, the chat messages the student sees, and the teacher-only reference."""

    pid: str
    messages: tuple[dict[str, str], ...]
    reference: str | None


def resolve_data_path(path: str) -> Path:
    """`pkg://` names a file shipped in the package; a relative path is tried from the current directory,
    then from the repository root."""
    if path.startswith(package_files.PREFIX):
        found = package_files.package_file(path)
        if found.is_file():
            return found
        raise ConfigError(f"local.data.path={path!r} is invalid: the package has no file {found}")
    for candidate in (Path(path), REPO_ROOT / path):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"local.data.path={path!r} is invalid: no such file (tried {os.getcwd()} and {REPO_ROOT})")


def read_problems(path: str, cfg: DataConfig, *, id_prefix: str) -> list[Problem]:
    """Every line of a JSONL file as a Problem; a missing prompt field is an error naming line and key."""
    from omniopd_verl.data.jsonl import iter_jsonl_objects

    problems = []
    for lineno, row in iter_jsonl_objects(resolve_data_path(path)):
        if cfg.prompt_key not in row:
            raise ConfigError(
                f"local.data.prompt_key={cfg.prompt_key!r} is invalid: line {lineno} of {path} has keys {sorted(row)}"
            )
        messages = []
        if cfg.system_prompt:
            messages.append({"role": "system", "content": cfg.system_prompt})
        messages.append({"role": "user", "content": str(row[cfg.prompt_key])})
        reference = None
        if cfg.reference_key is not None:
            if cfg.reference_key not in row:
                raise ConfigError(
                    f"local.data.reference_key={cfg.reference_key!r} is invalid: line {lineno} of {path} "
                    f"has keys {sorted(row)}"
                )
            reference = str(row[cfg.reference_key])
        problems.append(Problem(pid=f"{id_prefix}{lineno - 1}", messages=tuple(messages), reference=reference))
    if not problems:
        raise ConfigError(f"local.data.path={path!r} is invalid: the file holds no prompts")
    return problems


def load_splits(cfg: DataConfig) -> tuple[list[Problem], list[Problem]]:
    """(training problems, held-out problems). Without a held-out file the held-out set is the file's tail."""
    train = read_problems(cfg.path, cfg, id_prefix="train-")
    if cfg.heldout_path is not None:
        heldout = read_problems(cfg.heldout_path, cfg, id_prefix="heldout-")[: cfg.heldout_prompts]
    elif cfg.heldout_prompts:
        if cfg.heldout_prompts >= len(train):
            raise ConfigError(
                f"local.data.heldout_prompts={cfg.heldout_prompts} is invalid: allowed fewer than the "
                f"{len(train)} prompts of {cfg.path} (or set local.data.heldout_path)"
            )
        heldout, train = train[-cfg.heldout_prompts :], train[: -cfg.heldout_prompts]
    else:
        heldout = []
    if cfg.max_prompts is not None:
        train = train[: cfg.max_prompts]
    return train, heldout


def prompts_for_step(n_problems: int, step: int, per_step: int, seed: int) -> list[int]:
    """Indices of the problems of `step` (0-based): epochs of seeded permutations, read in order."""
    out = []
    for k in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(k, n_problems)
        order = list(range(n_problems))
        random.Random(f"{seed}:{epoch}").shuffle(order)
        out.append(order[offset])
    return out
