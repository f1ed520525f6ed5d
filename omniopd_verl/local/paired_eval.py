"""Held-out paired evaluation: did training move the student toward what the TEACHER writes?

One fixed held-out set, built once from the INITIAL student (it never changes between before and after,
or between arms, so the only thing that differs is the weights; nothing is sampled after training):
  1. The initial student samples one response per held-out prompt; the configured scheduler picks its
     anchors and the teacher writes N continuations at each (the Auditor, exactly as in training).
  2. The initial student writes N continuations of its own at the same prefixes ("base samples").
  3. Both sets go through one pipeline: text -> student tokens (no special tokens) -> first C tokens.

Two measures per prefix x, both computed for a model m in one teacher-forced pass per prefix
(`omniopd_verl.runtime.generation.continuation_distributions`: each prefix is prefilled once for its 2N texts):

  mass_m(x)  (`steered_token_mass_change`, the demo's PRIMARY metric, declared in issue 12's second
             round before its runs) -- only for a steered demonstration teacher (omniopd_verl/teachers/
             steering.py): the probability m gives the teacher's favoured token set S as its next
             token, averaged over every position of the base samples (the contexts the initial student
             writes itself). The demonstration teacher differs from the student by exactly this (its
             logits are the base model's plus a bias on S), so it is the direction "toward the teacher".
             Reported as mass_trained(x) - mass_initial(x) in percentage points, with the teacher's
             own mass at the same contexts as the target.
  gap_m(x)   (`teacher_minus_base_logprob_change`, secondary, any teacher):
                 mean_k mean_t log p_m(teacher_k,t | ...) - mean_k mean_t log p_m(base_k,t | ...)
             and its change gap_trained(x) - gap_initial(x), in nat/token. Recorded, and biased: the base
             samples are draws from the initial student, where its log-likelihood is at a maximum in
             expectation (E_p0[log p] is largest at p = p0), so ANY weight change lowers their likelihood
             by about KL(p0 || p) and raises the gap, teacher or not. The first demo run (issue 12's
             closing note) showed it: the shuffled-pi_hat control rose more than the OmniOPD arm.

Per-prefix values are averaged per prompt, then over prompts; 95% CI: percentile bootstrap over held-out
prompts (seeded), with the paired-t interval alongside. The arm is compared with a control trained
identically with the teacher's signal removed (local/control.py); `arm_minus_control` pairs them on the
same prompts.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from omniopd_verl.core.seeds import derive_seed
from omniopd_verl.runtime.generation import (
    continuation_distributions,
    eos_token_ids,
    pad_token_id,
    sample_continuations,
)
from omniopd_verl.runtime.scoring import encode_text

METRIC = "steered_token_mass_change"
METRIC_TEXT = (
    "change in the probability the student gives the demonstration teacher's favoured tokens as its next token, "
    "averaged over the positions of the initial student's own held-out continuations (percentage points; "
    "0 = no move toward the teacher)"
)
GAP_METRIC = "teacher_minus_base_logprob_change"
GAP_METRIC_TEXT = (
    "change in the student's mean log-likelihood per token of the teacher's held-out continuations minus that of "
    "the initial student's own continuations at the same prefixes (nat/token; biased upward by any drift)"
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
    pad = pad_token_id(tokenizer)

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


def measure(
    model,
    items: Sequence[HeldoutItem],
    *,
    pad_token_id: int,
    set_ids: Sequence[int] | None = None,
    logit_bias_V: torch.Tensor | None = None,
    gap: bool = True,
    max_rows: int = 64,
    progress: bool = False,
) -> dict[str, list[float]]:
    """Per item: "gap" (mean log-prob of the teacher texts minus that of the base samples) and, with
    `set_ids`, "mass" (the mean probability of the token set at the base samples' positions).
    `logit_bias_V` scores a steered model (the demonstration teacher's own mass, the target); `gap=False`
    skips the teacher texts (half the work when only the mass is wanted)."""
    if not gap and set_ids is None:
        raise ValueError("measure(gap=False) needs set_ids: there would be nothing to measure")
    step = max(1, max_rows // max(1, max(len(it.teacher_ids) + len(it.base_ids) for it in items)))
    set_index = None if set_ids is None else torch.tensor(sorted(set(set_ids)), dtype=torch.long)
    bar = None
    if progress:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="held-out scoring", unit="prefix", file=sys.stderr)
    gaps, masses = [], []
    for lo in range(0, len(items), step):
        part = items[lo : lo + step]
        first_base = [len(it.teacher_ids) if gap else 0 for it in part]
        conts = [(it.teacher_ids if gap else []) + it.base_ids for it in part]
        logp = [[0.0] * len(c) for c in conts]
        mass = [[] for _ in conts]
        for i, k, logp_TV in continuation_distributions(
            model,
            [it.prefix_ids for it in part],
            conts,
            pad_token_id=pad_token_id,
            max_rows=max_rows,
            logit_bias_V=logit_bias_V,
        ):
            targets_T = torch.tensor(conts[i][k], dtype=torch.long, device=logp_TV.device)
            logp[i][k] = float(logp_TV.gather(-1, targets_T.unsqueeze(-1)).mean())
            if set_index is not None and k >= first_base[i]:
                mass[i] += torch.logsumexp(logp_TV[:, set_index.to(logp_TV.device)], dim=-1).exp().tolist()
        for it, row, m in zip(part, logp, mass, strict=True):
            if gap:
                n_t = len(it.teacher_ids)
                gaps.append(sum(row[:n_t]) / n_t - sum(row[n_t:]) / len(row[n_t:]))
            masses.append(sum(m) / len(m) if m else float("nan"))
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()
    result = {"gap": gaps} if gap else {}
    return {"mass": masses, **result} if set_index is not None else result


def _by_prompt(items: Sequence[HeldoutItem], values: Sequence[float]) -> list[float]:
    groups: dict[str, list[float]] = {}
    for it, v in zip(items, values, strict=True):
        groups.setdefault(it.prompt_id, []).append(v)
    return [sum(v) / len(v) for v in groups.values()]


def mean_over_prompts(items: Sequence[HeldoutItem], values: Sequence[float]) -> float:
    """The per-prompt mean of per-item values, averaged over prompts (how every held-out number is averaged)."""
    per_prompt = _by_prompt(items, values)
    return sum(per_prompt) / len(per_prompt)


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


def paired_change(
    items: Sequence[HeldoutItem],
    before: Sequence[float],
    after: Sequence[float],
    *,
    metric: str = METRIC,
    seed: int = 0,
):
    """A measure's paired change with its CIs: per-prompt mean of after - before (values per item)."""
    diffs = [a - b for a, b in zip(after, before, strict=True)]
    result = mean_ci(_by_prompt(items, diffs), seed=seed)
    result.update(
        metric=metric,
        prefixes=len(items),
        before=mean_over_prompts(items, before),
        after=mean_over_prompts(items, after),
    )
    return result


MEASURES = {"mass": METRIC, "gap": GAP_METRIC}


def paired_changes(items, before: dict[str, list[float]], after: dict[str, list[float]], *, seed: int = 0):
    """`paired_change` of every measure present in both (keys of `measure`'s result), by measure key."""
    return {
        key: paired_change(items, before[key], after[key], metric=MEASURES[key], seed=seed)
        for key in before
        if key in after
    }


def arm_minus_control(
    items: Sequence[HeldoutItem], arm_after: Sequence[float], control_after: Sequence[float], *, seed: int = 0
):
    """The arms' difference on the same prefixes (their 'before' is the same initial student, so it cancels)."""
    diffs = [a - c for a, c in zip(arm_after, control_after, strict=True)]
    return mean_ci(_by_prompt(items, diffs), seed=seed)


def token_share_summary(items: Sequence[HeldoutItem], token_ids: Sequence[int]) -> dict[str, float]:
    """How often the teacher's texts and the base samples use a token set (the demonstration teacher's property)."""
    from omniopd_verl.teachers.steering import token_share

    return {
        "teacher": token_share([t for it in items for t in it.teacher_ids], token_ids),
        "base": token_share([t for it in items for t in it.base_ids], token_ids),
    }
