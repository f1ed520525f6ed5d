"""The content-addressed SQLite cache: every key field matters, the API key never does, and it persists."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

from omniopd_verl.teachers.cache import TeacherCache, cache_key, prefix_hash

BASE = dict(
    backend="openai_completions",
    model="m",
    prefix="x y",
    n=4,
    teacher_max_tokens=10,
    temperature=1.0,
    top_p=1.0,
    seed=3,
)


def test_every_field_changes_the_key_and_equal_requests_agree():
    key = cache_key(**BASE)
    assert key == cache_key(**dict(BASE))
    changed = dict(
        backend="litellm", model="m2", prefix="x y ", n=5, teacher_max_tokens=11, temperature=0.5, top_p=0.9, seed=4
    )
    keys = {cache_key(**{**BASE, field: value}) for field, value in changed.items()}
    assert len(keys) == len(changed) and key not in keys
    # structured prefixes (chat messages) hash canonically: key order does not matter
    assert prefix_hash({"a": 1, "b": [1, 2]}) == prefix_hash({"b": [1, 2], "a": 1})
    assert prefix_hash("context\n\nprompt") != prefix_hash("prompt")


def test_cache_persists_across_processes(tmp_path):
    path = tmp_path / "sub" / "cache.sqlite"
    cache = TeacherCache(path)
    key = cache_key(**BASE)
    cache.put(key, {"texts": ["é", " b"]})
    cache.close()
    code = (
        "import json,sys; from omniopd_verl.teachers.cache import TeacherCache; "
        f"c = TeacherCache({str(path)!r}); print(json.dumps(c.get({key!r}))); print(c.count())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == '{"texts": ["\\u00e9", " b"]}' and out[1] == "1"
    rows = sqlite3.connect(path).execute("SELECT key FROM teacher_cache").fetchall()
    assert rows == [(key,)]
