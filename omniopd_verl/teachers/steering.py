"""A demonstration teacher: the base model with its logits steered toward a named token set.

Privileged self-distillation of SmolLM2-135M (the teacher = the same model shown the reference solution)
carries almost no teacher-specific signal at this scale (issue 12 §2): a demo that trains against it
cannot show the student moving toward anything. This teacher differs from the student on purpose and
measurably: the `transformers` teacher's option

    omniopd.teacher.options.steer: {tokens: arithmetic, bias: 4.0}

adds `bias` to the logit of every token in the set before the temperature, so its continuations use
those tokens far more often than the student's own samples do (`token_share` measures it; the demo
prints both before training). It is a demonstration teacher, not a better model: use it to see that
OmniOPD moves a student toward what a teacher writes, and a real teacher for anything else.

Token sets (decoded token text, leading space ignored):
  arithmetic   digits and the characters of written arithmetic: 0-9 + - * / = x . , $ % ( ) < >
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omniopd_verl.errors import ConfigError

_ARITHMETIC = set("0123456789+-*/=x.,$%()<>")


def _is_arithmetic(text: str) -> bool:
    core = text.strip()
    return bool(core) and all(ch in _ARITHMETIC for ch in core) and any(ch.isdigit() or ch in "+-*/=" for ch in core)


TOKEN_SETS: dict[str, Callable[[str], bool]] = {"arithmetic": _is_arithmetic}


def token_set(tokenizer: Any, name: str) -> list[int]:
    """Ids of the vocabulary's tokens in the named set (special tokens never)."""
    if name not in TOKEN_SETS:
        raise ConfigError(
            f"omniopd.teacher.options.steer.tokens={name!r} is invalid: allowed one of {sorted(TOKEN_SETS)}"
        )
    test = TOKEN_SETS[name]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return [i for i in range(len(tokenizer)) if i not in special and test(tokenizer.decode([i]))]


def token_share(token_lists: Sequence[Sequence[int]], ids: Sequence[int]) -> float:
    """Fraction of all tokens in `token_lists` that are in `ids` (the property the steered teacher has)."""
    wanted = set(ids)
    total = sum(len(t) for t in token_lists)
    return sum(1 for t in token_lists for tok in t if tok in wanted) / total if total else float("nan")


@dataclass(frozen=True)
class Steering:
    """A teacher's `options.steer`, read and checked: the option as written, its token ids and its [V] bias."""

    option: Mapping[str, Any]
    token_ids: list[int]
    bias_V: Any

    @property
    def tokens(self) -> str:
        return str(self.option["tokens"])


def read_steering(options: Mapping[str, Any], tokenizer: Any, model: Any) -> Steering | None:
    """The one reader of a teacher's `options.steer` = {tokens: <set name>, bias: <number>} (None: not a
    demonstration teacher). The `transformers` teacher samples with `bias_V`; the local engine's held-out
    measurement uses the token ids (its "mass" metric) and scores the teacher's own mass with `bias_V`."""
    import torch

    steer = options.get("steer")
    if steer is None:
        return None
    if not isinstance(steer, Mapping) or set(steer) != {"tokens", "bias"}:
        raise ConfigError(
            f"omniopd.teacher.options.steer={steer!r} is invalid: allowed a mapping with exactly the keys "
            "'tokens' (a token set name) and 'bias' (a number)"
        )
    bias = steer["bias"]
    if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -50 <= bias <= 50:
        raise ConfigError(f"omniopd.teacher.options.steer.bias={bias!r} is invalid: allowed a number in [-50, 50]")
    ids = token_set(tokenizer, str(steer["tokens"]))
    bias_V = torch.zeros(model.get_output_embeddings().weight.shape[0], dtype=torch.float32)
    bias_V[torch.tensor(ids, dtype=torch.long)] = float(bias)
    return Steering(dict(steer), ids, bias_V)
