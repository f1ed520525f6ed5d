"""OmniOPD's per-step metrics from the trajectories' reward_extra_info (no verl imports).

The reward manager writes, per trajectory, raw counts under `omniopd_row/<name>` (names.ROW_STATS_PREFIX):
chunks, sums of pi_hat / k_sem_frac / pi_bar over its chunks, audited and response tokens, dropped
anchors, whether it got no audit, and that trajectory's teacher accounting. `step_metrics(rows)` turns
the rows of one training step into the metric names shared by both engines (COMMON names):
`audit/pi_hat_mean` = sum of pi_hat / number of chunks (a mean over chunks, not over rows), likewise
`audit/k_sem_frac_mean` and `audit/pi_bar_mean`; `audit/token_fraction` = audited / response tokens;
`audit/chunks`, `audit/anchors_dropped`, `audit/rows_without_audit` and every `teacher/*` are sums.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from omniopd_verl.verl_integration.names import ROW_STATS_PREFIX

MEANS_OVER_CHUNKS = ("pi_hat", "k_sem_frac", "pi_bar")
SUMS = ("chunks", "anchors_dropped", "rows_without_audit", "audited_tokens", "response_tokens")


def step_metrics(rows: Iterable[Mapping[str, Any] | None]) -> dict[str, float]:
    """audit/* and teacher/* for one step; {} when no row carries OmniOPD stats (e.g. a GRPO run)."""
    totals: dict[str, float] = {}
    n_rows = 0
    for info in rows:
        if not isinstance(info, Mapping) or f"{ROW_STATS_PREFIX}chunks" not in info:
            continue
        n_rows += 1
        for key, value in info.items():
            if key.startswith(ROW_STATS_PREFIX) and isinstance(value, (int, float)) and not isinstance(value, bool):
                name = key[len(ROW_STATS_PREFIX) :]
                totals[name] = totals.get(name, 0.0) + float(value)
    if n_rows == 0:
        return {}
    chunks = totals.get("chunks", 0.0)
    out = {f"audit/{name}": totals.get(name, 0.0) for name in ("chunks", "anchors_dropped", "rows_without_audit")}
    out["audit/rows"] = float(n_rows)
    tokens = totals.get("response_tokens", 0.0)
    out["audit/token_fraction"] = totals.get("audited_tokens", 0.0) / tokens if tokens else 0.0
    for name in MEANS_OVER_CHUNKS:
        if chunks:
            out[f"audit/{name}_mean"] = totals.get(f"{name}_sum", 0.0) / chunks
    for name, value in totals.items():
        if name.startswith("teacher/"):
            out[name] = value
    return out
