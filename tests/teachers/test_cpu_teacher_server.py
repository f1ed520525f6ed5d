"""The real CPU teacher server, started as a user starts it (`python -m omniopd_verl.serving.openai_compat`):
it says at start-up which model id and base URL to pass to `omniopd-verl audit`, and answers a health
check (issue 10 "Also")."""

from __future__ import annotations

import re

import httpx


def test_server_names_the_model_id_at_start_up_and_answers_health(tiny_model_path, start_teacher_server):
    text = start_teacher_server(tiny_model_path)
    assert "--teacher-model local-teacher" in text, text
    base = re.search(r"--teacher-api-base (http://127\.0\.0\.1:\d+/v1)", text).group(1)
    r = httpx.get(base.removesuffix("/v1") + "/health", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok", "model": "local-teacher"}
    assert httpx.get(base + "/health", timeout=10).status_code == 200
    assert httpx.get(base + "/models", timeout=10).json()["data"][0]["id"] == "local-teacher"
