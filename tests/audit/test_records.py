"""One serializer for an audit: the audit CLI's JSONL and the local engine's audits files are one shape."""

from __future__ import annotations

import json

from omniopd_verl.audit import ChunkAudit, ResponseAudit, audit_from_record, audit_record
from omniopd_verl.config import OmniOPDConfig

AUDIT = ResponseAudit(
    "row-7",
    12,
    [ChunkAudit(2, 5, 1.25, " a b", [" a b", " c"], [1.0, 0.25], 1.25, 0.4, (1.25 + 0.4) / 3)],
    anchors_dropped=1,
    entropy_source="exact",
    teacher={"requests": 2.0, "retries": 1.0, "failures": 1.0, "cache_hits": 0.0, "cost_usd": 0.5, "seconds": 0.1},
)


def test_record_round_trips_and_names_every_concept_once():
    record = json.loads(json.dumps(audit_record(AUDIT, OmniOPDConfig(similarity="ned", scheduler="uniform"))))
    assert record["id"] == "row-7" and record["similarity"] == "ned" and record["scheduler"] == "uniform"
    [chunk] = record["chunks"]
    assert set(chunk) == {
        "start",
        "end",
        "entropy",
        "student_text",
        "teacher_texts",
        "similarities",
        "k_sem",
        "k_sem_frac",
        "pi_bar",
        "pi_hat",
    }
    assert chunk["k_sem_frac"] == 1.25 / 2 and chunk["pi_hat"] == (1.25 + 0.4) / 3 and chunk["pi_bar"] == 0.4
    assert record["teacher"]["requests"] == 2 and isinstance(record["teacher"]["requests"], int)
    assert audit_from_record(record) == AUDIT


def test_the_audit_cli_and_the_local_engine_write_this_serializer():
    import inspect

    from omniopd_verl.cli import audit as cli_audit
    from omniopd_verl.local import train

    assert cli_audit._record(AUDIT, OmniOPDConfig()) == audit_record(AUDIT, OmniOPDConfig())
    assert train.audit_to_dict(AUDIT, OmniOPDConfig()) == audit_record(AUDIT, OmniOPDConfig())
    assert "asdict" not in inspect.getsource(train)  # no second, dataclass-shaped serializer


def test_the_verl_reward_manager_logs_this_serializer_without_the_texts():
    from omniopd_verl.verl_integration.reward_manager import row_stats

    logged = json.loads(row_stats(AUDIT, audited_tokens=3, samples=2)["omniopd_audit"])
    full = json.loads(json.dumps(audit_record(AUDIT)))
    for chunk in full["chunks"]:
        del chunk["student_text"], chunk["teacher_texts"]
    assert logged == full  # the same record, texts left out (they would travel with every batch)


def test_a_record_written_before_requests_was_named_reads_back():
    old = json.loads(json.dumps(audit_record(AUDIT)))
    old["teacher"]["calls"] = old["teacher"].pop("requests")  # the per-row count's former name
    assert audit_from_record(old).teacher == AUDIT.teacher
