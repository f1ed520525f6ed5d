"""Problems -> verl's RL parquet rows, and graded generations -> verl's SFT (messages) parquet rows.

RL row (what verl's RLHFDataset and reward loop read):
  data_source   benchmark name ("gsm8k", "math500", ...): verl groups validation metrics by it
  prompt        chat messages [{"role": "user", "content": <template(question)>}] (optional system turn)
  ability       "math" or "code"
  reward_model  {"ground_truth": <answer, or JSON of the tests for code>, "style": "rule" | "code"}
  extra_info    {"index", "split", "id", "question", ...the benchmark's own fields}
SFT row (verl's sft_trainer with data.messages_key=messages): {"messages": [user, assistant], ...}.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from omniopd_verl.data.benchmarks import Problem
from omniopd_verl.data.templates import render


def chat_prompt(question: str, template: str, system_prompt: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": render(template, question)})
    return messages


def ground_truth(problem: Problem, ability: str) -> tuple[str, str]:
    """(ground_truth, style). Code tests travel as JSON so the column stays a plain string."""
    if ability != "code":
        return problem.answer, "rule"
    keys = ("test", "entry_point", "prompt", "test_list", "test_setup_code")
    return json.dumps({k: problem.extra[k] for k in keys if k in problem.extra}), "code"


def to_verl_rows(
    problems: Iterable[Problem],
    *,
    data_source: str,
    ability: str,
    split: str,
    template: str,
    system_prompt: str | None = None,
) -> list[dict]:
    rows = []
    for index, problem in enumerate(problems):
        truth, style = ground_truth(problem, ability)
        extra = {"index": index, "split": split, "id": problem.id, "question": problem.question}
        extra.update({k: v for k, v in problem.extra.items() if k not in extra})
        rows.append(
            {
                "data_source": data_source,
                "prompt": chat_prompt(problem.question, template, system_prompt),
                "ability": ability,
                "reward_model": {"ground_truth": truth, "style": style},
                "extra_info": extra,
            }
        )
    return rows


def write_parquet(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write rows with pyarrow (nested dicts/lists become structs/lists, as verl's datasets loader expects)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError(f"refusing to write an empty parquet file to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    tmp.replace(path)  # a crashed run never leaves a truncated parquet that looks complete
    return path


def sft_rows(generations: Iterable[dict], *, only_correct: bool) -> tuple[list[dict], int]:
    """Teacher generations (records written by `omniopd-verl eval --save-generations`) -> SFT rows.

    Returns (rows, dropped): with `only_correct`, samples whose answer failed the grader are dropped
    (rejection-sampled SeqKD); otherwise every sample is kept.
    """
    rows, dropped = [], 0
    for record in generations:
        for sample, correct in zip(record["responses"], record["correct"], strict=True):
            if only_correct and not correct:
                dropped += 1
                continue
            rows.append(
                {
                    "messages": [*record["prompt"], {"role": "assistant", "content": sample}],
                    "data_source": record["benchmark"],
                    "extra_info": {"id": str(record["id"]), "correct": bool(correct)},
                }
            )
    return rows, dropped
