"""A persistent, content-addressed cache of teacher answers (SQLite), so reruns never pay twice.

Key = sha256 of the canonical JSON of (backend, model, prefix hash, n, max tokens, temperature, top-p,
seed). The prefix hash covers everything the teacher is shown: the exact prompt text or chat messages
the backend sends, including any teacher_context. Never the API key, the API base or headers: those
are not content, and a key must never reach a file. Values are JSON ({"texts": [...], usage}); only
complete, validated answers (exactly n texts) are stored. Safe across threads and processes (WAL).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA = "CREATE TABLE IF NOT EXISTS teacher_cache (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"


def prefix_hash(prefix: Any) -> str:
    """sha256 of the teacher-visible content (a string, or a JSON-able structure such as messages)."""
    data = prefix if isinstance(prefix, str) else json.dumps(prefix, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def cache_key(
    *,
    backend: str,
    model: str,
    prefix: Any,
    n: int,
    teacher_max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    options: Mapping[str, Any] | None = None,
) -> str:
    """Content address of one raw call: everything that shapes its samples (never an API key).

    `options` are the plugin's own options (config.options minus the library's): a steered and an
    unsteered teacher on the same weights must not share entries. Left out when empty, so cache files
    written before options were part of the key stay valid for option-free teachers.
    """
    fields = {
        "backend": backend,
        "model": model,
        "prefix": prefix_hash(prefix),
        "n": n,
        "max_tokens": teacher_max_tokens,  # field name kept: existing cache files stay valid
        "temperature": float(temperature),
        "top_p": float(top_p),
        "seed": seed,
    }
    if options:
        fields["options"] = json.loads(json.dumps(dict(options), sort_keys=True, default=str))
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class TeacherCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)
        self._db.commit()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM teacher_cache WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: dict[str, Any]) -> None:
        import time

        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO teacher_cache (key, value, created) VALUES (?, ?, ?)",
                (key, json.dumps(value, ensure_ascii=False), time.time()),
            )
            self._db.commit()

    def count(self) -> int:  # not __len__: an empty cache must not be falsy
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM teacher_cache").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
