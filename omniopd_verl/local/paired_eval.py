"""Held-out paired evaluation: did training move the student toward what the TEACHER writes?

The primary metric, declared before any run (issue 12 §2), `teacher_minus_base_logprob_change`:
  1. The INITIAL student samples one response per held-out prompt; the configured scheduler picks its
     anchors and the teacher writes N continuations at each (the Auditor, exactly as in training).
  2. The initial student writes N continuations of its own at the same prefixes ("base samples").
  3. Both sets go through one pipeline: text -> student tokens (no special tokens) -> first C tokens.
  4. For a model m and a prefix x:
         gap_m(x) = mean_k mean_t log p_m(teacher_k,t | x, ...) - mean_k mean_t log p_m(base_k,t | x, ...)
     and the metric is gap_trained(x) - gap_initial(x), averaged over a prompt's prefixes, then over
     prompts, in nat/token.
A student that merely sharpens, or any change that treats the teacher's texts and the student's own
kind of text alike, leaves it at 0 in expectation; it is positive only when teacher-like text gained
likelihood relative to base-model text. No sampling after training: the texts are fixed, so the only
thing that differs between before and after is the weights. 95% CI: percentile bootstrap over
held-out prompts (seeded), with the paired-t interval alongside. Each prefix is prefilled once for its
2N texts (`omniopd_verl.generation.score_continuations`).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from omniopd_verl.generation import derive_seed, sample_continuations, score_continuations
from omniopd_verl.student import encode_text

METRIC = "teacher_minus_base_logprob_change"
METRIC_TEXT = (
    "change in the student's mean log-likelihood per token of the teacher's held-out continuations minus that of "
    "the initial student's own continuations at the same prefixes (nat/token; 0 = no move toward the teacher)"
)


@dataclass
class HeldoutItem:
    """One held-out prefix and the fixed texts scored at it (student token ids, each at most C tokens)."""

    prompt_id: str
    prefix_ids: list[int]
    teacher_ids: list[list[int]]
    base_ids: list[list[int]]


def trimmed_ids(tokenizer, text: str, max_tokens: int) -> list[int]:
    return encode_text(tokenizer, text)[:max_tokens]


def build_heldout_set(rollouts, audits, ref_model, tokenizer, *, chunk_len: int, seed: int) -> list[HeldoutItem]:
    """Items from the initial student's held-out responses and their audits (one item per audited chunk)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    from omniopd_verl.generation import eos_token_ids

    items, prefixes, ns = [], [], []
    for r, a in zip(rollouts, audits, strict=True):
        for c in a.chunks:
            teacher = [ids for ids in (trimmed_ids(tokenizer, t, chunk_len) for t in c.teacher_texts) if ids]
            if not teacher:
                continue
            prefix = list(r.prompt_ids) + list(r.response_ids[: c.start])
            items.append(HeldoutItem(r.problem.pid, prefix, teacher, []))
            prefixes.append(prefix)
            ns.append(len(c.teacher_texts))
    samples = sample_continuations(
        ref_model,
        prefixes,
        n=ns,
        max_new_tokens=chunk_len,
        temperature=1.0,
        top_p=1.0,
        seeds=[derive_seed(seed, i) for i in range(len(prefixes))],
        pad_token_id=pad,
        eos_token_ids=eos_token_ids(ref_model, tokenizer),
        max_rows=64,
    )
    for item, row in zip(items, samples, strict=True):
        texts = [tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in row]
        item.base_ids = [ids for ids in (trimmed_ids(tokenizer, t, chunk_len) for t in texts) if ids]
    return [it for it in items if it.base_ids]


def save_items(items: Sequence[HeldoutItem], path: Path) -> None:
    path.write_text("\n".join(json.dumps(asdict(it)) for it in items) + "\n")


def load_items(path: Path) -> list[HeldoutItem]:
    return [HeldoutItem(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def gaps(
    model, items: Sequence[HeldoutItem], *, pad_token_id: int, max_rows: int = 64, progress: bool = False
) -> list[float]:
    """gap_m(x) per item: mean per-token log-prob of the teacher texts minus that of the base samples."""
    step = max(1, max_rows // max(1, max(len(it.teacher_ids) + len(it.base_ids) for it in items)))
    bar = None
    if progress:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="held-out scoring", unit="prefix", file=sys.stderr)
    scores = []
    for lo in range(0, len(items), step):
        part = items[lo : lo + step]
        conts = [it.teacher_ids + it.base_ids for it in part]
        scores += score_continuations(
            model, [it.prefix_ids for it in part], conts, pad_token_id=pad_token_id, max_rows=max_rows
        )
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()
    out = []
    for it, row in zip(items, scores, strict=True):
        k = len(it.teacher_ids)
        teacher = sum(float(lp.mean()) for lp in row[:k]) / k
        base = sum(float(lp.mean()) for lp in row[k:]) / len(row[k:])
        out.append(teacher - base)
    return out


def _by_prompt(items: Sequence[HeldoutItem], values: Sequence[float]) -> list[float]:
    groups: dict[str, list[float]] = {}
    for it, v in zip(items, values, strict=True):
        groups.setdefault(it.prompt_id, []).append(v)
    return [sum(v) / len(v) for v in groups.values()]


def mean_ci(values: Sequence[float], *, seed: int = 0, resamples: int = 4000) -> dict[str, object]:
    """Mean, percentile-bootstrap 95% CI and paired-t 95% CI of per-prompt values."""
    n = len(values)
    mean = sum(values) / n
    rng = random.Random(seed)
    boots = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(resamples))
    lo, hi = boots[int(0.025 * resamples)], boots[int(0.975 * resamples) - 1]
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    t = _t975(n - 1)
    half = t * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"effect": mean, "ci95": [lo, hi], "t_ci95": [mean - half, mean + half], "prompts": n}


def _t975(df: int) -> float:
    """Two-sided 95% Student-t quantile (table for small df, normal beyond)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
    if df in table:
        return table[df]
    return 1.96 + 2.4 / df if df > 0 else float("nan")


def paired_change(items: Sequence[HeldoutItem], before: Sequence[float], after: Sequence[float], *, seed: int = 0):
    """The primary metric with its CIs: per-prompt mean of gap_after - gap_before."""
    diffs = [a - b for a, b in zip(after, before, strict=True)]
    result = mean_ci(_by_prompt(items, diffs), seed=seed)
    result.update(
        metric=METRIC, prefixes=len(items), gap_before=sum(before) / len(before), gap_after=sum(after) / len(after)
    )
    return result


def arm_minus_control(
    items: Sequence[HeldoutItem], arm_after: Sequence[float], control_after: Sequence[float], *, seed: int = 0
):
    """The arms' difference on the same prefixes (their 'before' is the same initial student, so it cancels)."""
    diffs = [a - c for a, c in zip(arm_after, control_after, strict=True)]
    return mean_ci(_by_prompt(items, diffs), seed=seed)


def token_share_summary(items: Sequence[HeldoutItem], token_ids: Sequence[int]) -> dict[str, float]:
    """How often the teacher's texts and the base samples use a token set (the demonstration teacher's property)."""
    from omniopd_verl.demo_teacher import token_share

    return {
        "teacher": token_share([t for it in items for t in it.teacher_ids], token_ids),
        "base": token_share([t for it in items for t in it.base_ids], token_ids),
    }
