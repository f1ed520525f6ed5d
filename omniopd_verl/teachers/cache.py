"""A persistent, content-addressed cache of teacher answers (SQLite), so reruns never pay twice.

Key = sha256 of the canonical JSON of (backend, model, prefix hash, n, max tokens, temperature, top-p,
seed, plugin options, teacher identity). The prefix hash covers everything the teacher is shown: the
exact prompt text or chat messages the backend sends, including any teacher_context. The teacher
identity (`identity.teacher_identity`: the API base without credentials, and the weights digest a server
reports) says who answered; never the API key or headers: a key must never reach a file. Values are
JSON ({"texts": [...], usage}); only complete, validated answers (exactly n texts) are stored, and every
value is validated again when read (`entry_texts`): a file can be edited or damaged. Safe across threads
and processes on one host (WAL); in a verl run only the run's ledger opens it (`wal=False`).

Opening checks the file up front (a paid answer that cannot be stored is worse than a refusal before
the first call): a file that is not SQLite (truncated, or another kind) or cannot be written raises
ConfigError with one line naming the path.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omniopd_verl.errors import ConfigError

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
    teacher: Mapping[str, Any] | None = None,
) -> str:
    """Content address of one raw call: everything that shapes its samples (never an API key).

    `options` are the plugin's own options (config.options minus the library's): a steered and an
    unsteered teacher on the same weights must not share entries. Left out when empty, so cache files
    written before options were part of the key stay valid for option-free teachers. `teacher` is the
    identity of who answers (`identity.teacher_identity`), left out when None for the same reason.
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
    if teacher:
        fields["teacher"] = dict(teacher)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class InvalidEntry(ValueError):
    """A cached value that is not a valid answer (edited, damaged, or from another version)."""


_SURROGATE = re.compile("[\ud800-\udfff]")


def entry_texts(value: Any, n: int, max_chars: int) -> list[str]:
    """The texts of a cached value, validated: exactly n strings of valid text, each cut to max_chars."""
    texts = value.get("texts") if isinstance(value, dict) else None
    if not isinstance(texts, list) or len(texts) != n:
        got = type(texts).__name__ if not isinstance(texts, list) else f"{len(texts)} texts"
        raise InvalidEntry(f"expected a list of {n} texts, found {got}")
    for j, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidEntry(f"text {j} is a {type(text).__name__}, not a string")
        if _SURROGATE.search(text):
            raise InvalidEntry(f"text {j} holds a lone surrogate")
    return [t[:max_chars] for t in texts]


def _open_error(path: Path, exc: Exception) -> ConfigError:
    text = str(exc)
    if "readonly" in text or "read-only" in text or isinstance(exc, PermissionError):
        why = "cannot be written (read-only file or folder): make it writable, or pass another cache path"
    elif "not a database" in text or "malformed" in text or "encrypted" in text:
        why = "is not a teacher cache (not SQLite, or truncated): move it away, or pass another cache path"
    else:
        why = f"cannot be opened as a teacher cache: {text}"
    return ConfigError(f"omniopd.teacher.cache_path={str(path)!r} {why}")


class TeacherCache:
    def __init__(self, path: str | Path, *, wal: bool = True):
        """`wal=False` (the run ledger, the file's only user) keeps SQLite's rollback journal: WAL needs
        shared memory between the processes on one host, which a network filesystem does not give."""
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        except (OSError, sqlite3.Error) as exc:
            raise _open_error(self.path, exc) from None
        try:
            self._db.execute(f"PRAGMA journal_mode={'WAL' if wal else 'DELETE'}")
            self._db.execute(SCHEMA)
            self._db.commit()
            # a write that is rolled back: a read-only file fails here, before anything is paid for
            self._db.execute("INSERT OR REPLACE INTO teacher_cache VALUES ('omniopd-write-check', '{}', 0)")
            self._db.rollback()
        except (OSError, sqlite3.Error) as exc:
            self._db.close()
            raise _open_error(self.path, exc) from None

    def get(self, key: str) -> Any | None:
        """The stored value (None if absent); InvalidEntry when it is not JSON or too deeply nested."""
        with self._lock:
            row = self._db.execute("SELECT value FROM teacher_cache WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except (ValueError, TypeError, RecursionError) as exc:
            raise InvalidEntry(f"not JSON ({type(exc).__name__})") from None

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store one answer; raises sqlite3.Error / OSError if the file cannot take it (the caller decides)."""
        import time

        data = json.dumps(value, ensure_ascii=False)
        with self._lock:
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO teacher_cache (key, value, created) VALUES (?, ?, ?)",
                    (key, data, time.time()),
                )
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise

    def count(self) -> int:  # not __len__: an empty cache must not be falsy
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM teacher_cache").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
