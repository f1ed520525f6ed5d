"""Reading JSONL input files: one place for the line-numbered errors every reader owes its user.

`iter_jsonl_objects(path, flag=...)` yields `(line number, object)` for every non-blank line and raises
ConfigError naming the file and the line when a line is not UTF-8 text (with the bad byte), not JSON,
or not a JSON object. The file is decoded line by line from bytes, so a bad byte is reported with its
line rather than as a UnicodeDecodeError somewhere in the file. A UTF-8 byte-order mark on the first
line is accepted. A line longer than MAX_LINE_BYTES is refused by its length while it is read (never held
whole in memory), and JSON that Python cannot turn into values (nested deeper than its recursion limit,
an integer of more than 4300 digits) is refused with the line, like any other bad JSON. Callers check
their own keys on the objects they get.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from omniopd_verl.errors import ConfigError

MAX_LINE_BYTES = 16 * 1024 * 1024
"""Longest input line read (16 MiB): room for a long reference solution as teacher_context, far below what
would take minutes and gigabytes to parse."""


def iter_jsonl_objects(path: str | os.PathLike, *, flag: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; `flag` names the option the path came from."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        source = f"{flag} {str(path)!r}" if flag else f"input {path}"
        raise ConfigError(f"{source} cannot be read: {exc.strerror}") from None
    with handle:
        lineno = 0
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            lineno += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise ConfigError(
                    f"{path} line {lineno} is longer than {MAX_LINE_BYTES} bytes (the longest input line read): "
                    "shorten it, or split its text"
                )
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(
                    f"{path} line {lineno} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} "
                    "of the line (save the file as UTF-8)"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path} line {lineno} is not JSON: {exc.msg} (column {exc.colno})") from None
            except RecursionError:
                raise ConfigError(f"{path} line {lineno}: JSON nested too deeply to read (arrays or objects)") from None
            except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
                raise ConfigError(f"{path} line {lineno} holds a value that cannot be read: {exc}") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{path} line {lineno} must be a JSON object, got {type(record).__name__}")
            yield lineno, record
