"""A self-contained HTML page showing an audit: each response with its audited chunks coloured by weight
(pi_hat), and under it every chunk's teacher alternatives with their similarities.

No external assets, scripts or fonts: inline CSS only, so the file can be mailed or opened offline.
Every piece of text (prompts, responses, teacher texts, ids) is HTML-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:70em;color:#222;line-height:1.45}
h1{font-size:1.5em}h2{font-size:1.1em;margin-top:2em;border-top:1px solid #ccc;padding-top:1em}
.meta{color:#555;font-size:.9em}.prompt{white-space:pre-wrap;background:#f4f4f4;padding:.6em;border-radius:4px;font-size:.85em;max-height:12em;overflow:auto}
.response{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;padding:.6em;border:1px solid #ddd;border-radius:4px}
.chunk{border-radius:3px;padding:0 1px;text-decoration:none;color:#000}
.chunk sup{font-size:.7em;color:#333}
table{border-collapse:collapse;margin:.4em 0 1em 0;font-size:.85em;width:100%}
td,th{border:1px solid #ddd;padding:.25em .5em;vertical-align:top;text-align:left}
td.t{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace}
.legend span{display:inline-block;padding:0 .6em;margin-right:.2em;border-radius:3px}
details{margin:.4em 0}summary{cursor:pointer}
"""


def weight_colour(weight: float) -> str:
    """pi_hat 0 -> red, 0.5 -> yellow, 1 -> green (HSL hue 0..120), light enough to read text on."""
    w = min(1.0, max(0.0, float(weight)))
    return f"hsl({round(120 * w)},75%,78%)"


@dataclass
class ReportItem:
    """One response for the report: its id, prompt text, response split at chunk boundaries, and the
    output record (with `chunks` as written to OUT.jsonl). `segments[i]` is (text, chunk index or None)."""

    id: str
    prompt_text: str
    segments: list[tuple[str, int | None]]
    record: Mapping[str, Any]


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def render_report(
    items: Sequence[ReportItem], *, title: str = "OmniOPD audit", summary: Mapping[str, Any] | None = None
) -> str:
    """The whole page as a string."""
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    if summary:
        out.append("<table class='summary'>")
        out.extend(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in summary.items())
        out.append("</table>")
    legend = "".join(f"<span style='background:{weight_colour(w)}'>{w:.2f}</span>" for w in (0.0, 0.25, 0.5, 0.75, 1.0))
    out.append(
        f"<p class='legend'>Chunk colour = &pi;&#770; (pi_hat, posterior agreement with the teacher): {legend}</p>"
    )
    for r, item in enumerate(items):
        rec = item.record
        chunks = rec.get("chunks", [])
        out.append(f"<h2 id='r{r}'>{_e(item.id)}</h2>")
        teacher = rec.get("teacher", {})
        meta = (
            f"{len(chunks)} chunks audited, {rec.get('anchors_dropped', 0)} dropped; "
            f"entropy: {rec.get('entropy_source', '')}; similarity: {rec.get('similarity', '')}; "
            f"teacher requests {teacher.get('requests', 0)}, retries {teacher.get('retries', 0)}, "
            f"failures {teacher.get('failures', 0)}, cache hits {teacher.get('cache_hits', 0)}"
        )
        out.append(f"<p class='meta'>{_e(meta)}</p>")
        out.append(f"<details><summary>prompt</summary><div class='prompt'>{_e(item.prompt_text)}</div></details>")
        body = []
        for text, k in item.segments:
            if k is None:
                body.append(_e(text))
                continue
            c = chunks[k]
            tip = f"chunk {k}: tokens [{c['start']}, {c['end']}) pi_hat {c['pi_hat']:.3f} k_sem {c['k_sem']:.2f} pi_bar {c['pi_bar']:.3f}"
            body.append(
                f"<a class='chunk' href='#r{r}c{k}' title='{_e(tip)}' style='background:{weight_colour(c['pi_hat'])}'>"
                f"{_e(text)}<sup>{c['pi_hat']:.2f}</sup></a>"
            )
        out.append(f"<div class='response'>{''.join(body)}</div>")
        for k, c in enumerate(chunks):
            head = (
                f"chunk {k} [{c['start']}, {c['end']}): pi_hat {c['pi_hat']:.3f}, k_sem {c['k_sem']:.2f}/"
                f"{len(c['teacher_texts'])}, pi_bar {c['pi_bar']:.3f}"
                + (f", entropy {c['entropy']:.2f}" if c.get("entropy") is not None else "")
            )
            out.append(
                f"<details id='r{r}c{k}'><summary style='background:{weight_colour(c['pi_hat'])}'>{_e(head)}</summary>"
                f"<table><tr><th>student</th><td class='t' colspan='2'>{_e(c['student_text'])}</td></tr>"
            )
            for j, (t, s) in enumerate(zip(c["teacher_texts"], c["similarities"], strict=True)):
                out.append(
                    f"<tr><th>teacher {j}</th><td class='t'>{_e(t)}</td>"
                    f"<td style='background:{weight_colour(s)}'>{s:.3f}</td></tr>"
                )
            out.append("</table></details>")
    out.append("</body></html>")
    return "\n".join(out)
