"""The real CPU teacher server, started as a user starts it (`python -m omniopd_verl.serving.openai_compat`):
it says at start-up which model id and base URL to pass to `omniopd-verl audit`, and answers a health
check (issue 10 "Also")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx


def test_server_names_the_model_id_at_start_up_and_answers_health(tiny_model_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "omniopd_verl.serving.openai_compat", "--model", tiny_model_path, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        lines, deadline = [], time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C" in line:
                break  # the start-up message is out (a readline after it would wait forever)
        text = "".join(lines)
        assert "--teacher-model local-teacher" in text, text
        base = re.search(r"--teacher-api-base (http://127\.0\.0\.1:\d+/v1)", text).group(1)
        r = httpx.get(base.removesuffix("/v1") + "/health", timeout=10)
        assert r.status_code == 200 and r.json() == {"status": "ok", "model": "local-teacher"}
        assert httpx.get(base + "/health", timeout=10).status_code == 200
        assert httpx.get(base + "/models", timeout=10).json()["data"][0]["id"] == "local-teacher"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
