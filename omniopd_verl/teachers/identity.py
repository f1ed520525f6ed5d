"""Which teacher answered: the part of the cache key that says who, and the URL's secrets.

Two servers can serve different weights under one model name (this project's server calls every model
`local-teacher`), so a cached answer is only reusable from the teacher that gave it. The identity is
- the API base without its secrets (`public_api_base`: no user:pass@, no query, no fragment), and
- for a server that reports it, the digest of the weights it serves: the `weights_digest` field of the
  model's entry in its `GET {api_base}/models` list (`served_weights_digest`; this project's
  `serving.openai_compat` reports the sha256 of its weight files, `weights_digest`).
A teacher without an api_base (a provider's own endpoint, or an in-process model) has no identity
beyond its name and model, so its cache keys are those of older versions, and their entries stay valid.

`url_secrets` lists what an API base carries that must never be printed: the password, "user:pass",
its base64 form (what HTTP Basic auth sends, and what a server may echo back), and query values.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
MODELS_TIMEOUT_S = 5.0


def public_api_base(url: str) -> str:
    """`url` without credentials, query or fragment, scheme and host lower-cased, no trailing slash."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 literal needs its brackets back
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))


def url_secrets(url: str | None) -> tuple[str, ...]:
    """Every secret an API base may carry, in each form it may come back in."""
    if not url:
        return ()
    parts = urlsplit(url.strip())
    found: list[str] = []
    if parts.password:
        user, password = unquote(parts.username or ""), unquote(parts.password)
        pair = f"{user}:{password}"
        found += [password, parts.password, pair, base64.b64encode(pair.encode()).decode()]
    elif parts.username:  # a token as the user name (https://TOKEN@host)
        found += [unquote(parts.username), parts.username]
    found += [value for _, value in parse_qsl(parts.query, keep_blank_values=False)]
    return tuple(s for s in found if s)


def served_weights_digest(api_base: str, model: str, api_key: str | None) -> str | None:
    """The `weights_digest` a server reports for `model` in GET {api_base}/models; None if it reports none
    (or cannot be asked: most servers and every provider API have no such field)."""
    parts = urlsplit(api_base.strip())
    url = public_api_base(api_base) + "/models" + (f"?{parts.query}" if parts.query else "")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    elif parts.username is not None:  # credentials in the URL: sent as the teacher's client sends them
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=MODELS_TIMEOUT_S) as response:  # noqa: S310 - the user's URL
            listing = json.loads(response.read(1 << 20))
    except (OSError, ValueError, urllib.error.URLError):
        return None
    entries = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(entries, list):
        return None
    names = {model, model.split("/", 1)[-1]}  # litellm names carry a provider prefix ("openai/local-teacher")
    for entry in entries:
        if isinstance(entry, dict) and entry.get("id") in names:
            digest = entry.get("weights_digest")
            return digest if isinstance(digest, str) and digest else None
    return None


def weights_digest(folder: str | os.PathLike) -> str:
    """sha256 over a model folder's weight files and config.json (names and bytes, in name order)."""
    root = Path(folder)
    files = sorted(
        p for p in root.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\x00")
        with open(path, "rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 22), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def teacher_identity(api_base: str | None, digest: str | None) -> dict[str, Any] | None:
    """The cache key's `teacher` field: None (left out of the key) for a teacher without an api_base."""
    if not api_base:
        return None
    identity: dict[str, Any] = {"api_base": public_api_base(api_base)}
    if digest:
        identity["weights"] = digest
    return identity
