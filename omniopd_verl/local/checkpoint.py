"""Checkpoints of a local run: weights, optimizer state and the step, written atomically.

Layout: `<output_dir>/checkpoints/step_<k>/` holds the student as a normal transformers folder
(`save_pretrained`, so `omniopd-verl audit --student` or any transformers code can load it), the
tokenizer, `optimizer.pt` and `trainer_state.json`. A folder is written under a temporary name and
renamed when complete, so a crash never leaves a half checkpoint that `latest_checkpoint` would pick.
Random state need not be saved: every random draw of step k is seeded from (seed, k).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.json"


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step}"


def save_checkpoint(output_dir, step: int, model, tokenizer, optimizer, state: dict[str, Any]) -> Path:
    target = checkpoint_dir(output_dir, step)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2, sort_keys=True))
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.name.startswith("step_") and (p / STATE_FILE).is_file()]
    steps = []
    for p in done:
        try:
            steps.append((int(p.name[len("step_") :]), p))
        except ValueError:
            continue
    return max(steps)[1] if steps else None


def load_checkpoint(path: Path, model, optimizer) -> dict[str, Any]:
    """Load weights and optimizer state in place; returns the saved trainer state (with 'step')."""
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"checkpoint {path} holds no *.safetensors weights")
    state_dict: dict[str, torch.Tensor] = {}
    for f in files:
        state_dict.update(load_file(str(f)))
    # tied embeddings are saved once; strict=False tolerates the missing tied copy, anything else is an error
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    real_missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if real_missing or unexpected:
        raise RuntimeError(
            f"checkpoint {path} does not match the model: missing {real_missing}, unexpected {unexpected}"
        )
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    device = next(model.parameters()).device
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    return json.loads((path / STATE_FILE).read_text())
