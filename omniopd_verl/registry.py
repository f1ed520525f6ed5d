"""Plugin registry: teachers, similarity metrics and schedulers, found through entry points.

Groups (pyproject `[project.entry-points."<group>"]`):
    omniopd_verl.teachers     name -> TeacherBackend class
    omniopd_verl.similarity   name -> Similarity class
    omniopd_verl.schedulers   name -> Scheduler class
Built-ins are registered through these same groups in our own pyproject.toml: a third-party package
is discovered exactly like them. Names are read from installed metadata without importing anything;
a plugin is imported the first time it is asked for (so litellm or sentence-transformers cost nothing
until used) and cached afterwards. Unknown names and broken plugins fail loudly.
"""

from __future__ import annotations

import threading
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from omniopd_verl.errors import PluginError

GROUPS: dict[str, str] = {
    "teachers": "omniopd_verl.teachers",
    "similarity": "omniopd_verl.similarity",
    "schedulers": "omniopd_verl.schedulers",
}

_lock = threading.Lock()
_entry_points: dict[str, dict[str, EntryPoint]] = {}
_loaded: dict[tuple[str, str], Any] = {}


def _group(kind: str) -> str:
    if kind not in GROUPS:
        raise PluginError(f"unknown plugin kind {kind!r}; allowed: {sorted(GROUPS)}")
    return GROUPS[kind]


def _discover(kind: str) -> dict[str, EntryPoint]:
    group = _group(kind)
    with _lock:
        if kind not in _entry_points:
            found: dict[str, EntryPoint] = {}
            for ep in entry_points(group=group):
                other = found.get(ep.name)
                if other is not None and other.value != ep.value:
                    raise PluginError(
                        f"two installed packages register {group} plugin {ep.name!r}: "
                        f"{other.value!r} and {ep.value!r}; uninstall one of them"
                    )
                found[ep.name] = ep
            _entry_points[kind] = found
        return _entry_points[kind]


def available(kind: str) -> list[str]:
    """Sorted names installed for a plugin kind ('teachers', 'similarity', 'schedulers'); imports nothing."""
    return sorted(_discover(kind))


def check_name(kind: str, name: str, key: str) -> None:
    """Raise a PluginError naming the config key, the value and the installed names if `name` is unknown."""
    names = available(kind)
    if name not in names:
        raise PluginError(f"{key}={name!r} is not an installed {kind} plugin; installed: {names}")


def load(kind: str, name: str) -> Any:
    """Import and return the object a plugin's entry point names (lazy, cached, thread-safe)."""
    eps = _discover(kind)
    if name not in eps:
        raise PluginError(f"unknown {kind} plugin {name!r}; installed: {sorted(eps)}")
    key = (kind, name)
    with _lock:
        if key not in _loaded:
            ep = eps[name]
            try:
                _loaded[key] = ep.load()
            except Exception as exc:  # report which plugin broke and why, never a bare ImportError
                raise PluginError(
                    f"{kind} plugin {name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}"
                ) from exc
        return _loaded[key]


def create(kind: str, name: str, /, **kwargs: Any) -> Any:
    """Instantiate a plugin: `load(kind, name)(**kwargs)`."""
    factory = load(kind, name)
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise PluginError(f"{kind} plugin {name!r} rejected its options {sorted(kwargs)}: {exc}") from exc


def reset() -> None:
    """Forget discovered and loaded plugins (after installing a package at run time, and in tests)."""
    with _lock:
        _entry_points.clear()
        _loaded.clear()
