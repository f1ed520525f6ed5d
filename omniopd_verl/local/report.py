"""The local engine's record of its last step: the audits as JSONL and the HTML report (chunk by chunk)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def write_last_step_report(
    output_dir: Path, tokenizer, rollouts: Sequence, audits: Sequence, run, step: int
) -> Path | None:
    """Write last_step_audits.jsonl and last_step_report.html; returns the HTML path (None before any step)."""
    if not audits:
        return None
    from omniopd_verl.audit.records import audit_record
    from omniopd_verl.audit.report import ReportItem, render_report
    from omniopd_verl.audit.text import ResponseText

    with (output_dir / "last_step_audits.jsonl").open("w") as fh:
        for a in audits:  # the one audit serializer: the shape of `omniopd-verl audit`'s JSONL
            fh.write(json.dumps(audit_record(a, run.omniopd)) + "\n")
    items = []
    for r, a in zip(rollouts, audits, strict=True):
        bounds, kinds = [0], []
        for k, c in enumerate(a.chunks):
            if c.start > bounds[-1]:
                bounds.append(c.start)
                kinds.append(None)
            bounds.append(c.end)
            kinds.append(k)
        if bounds[-1] < len(r.response_ids):
            bounds.append(len(r.response_ids))
            kinds.append(None)
        texts = ResponseText(tokenizer, r.response_ids).segments(bounds)
        items.append(
            ReportItem(r.uid, r.prompt_text, list(zip(texts, kinds, strict=True)), audit_record(a, run.omniopd))
        )
    html = output_dir / "last_step_report.html"
    summary = {
        "step": str(step),
        "teacher": f"{run.omniopd.teacher.name}:{run.omniopd.teacher.model}",
        "similarity": run.omniopd.similarity,
    }
    html.write_text(
        render_report(items, title=f"OmniOPD local engine: audits of step {step}", summary=summary), encoding="utf-8"
    )
    return html
