"""Plugin registry: teachers, similarity metrics and schedulers, found through entry points.

Groups (pyproject `[project.entry-points."<group>"]`), protocols in `omniopd_verl.protocols`:
    omniopd_verl.teachers     name -> TeacherPlugin class (the raw call; `create_teacher` wraps it in the
                              teacher library, so every teacher gets cache, retries, limits, budget, ...)
    omniopd_verl.similarity   name -> Similarity class
    omniopd_verl.schedulers   name -> Scheduler class
Built-ins are registered through these same groups in our own pyproject.toml: a third-party package
is discovered exactly like them. Names are read from installed metadata without importing anything;
a plugin is imported the first time it is asked for (so litellm or sentence-transformers cost nothing
until used) and cached afterwards. Unknown names and broken plugins fail loudly; a plugin lacking a
method of its protocol (`protocols.REQUIRED_METHODS`) fails at load, naming the plugin and the method.
"""

from __future__ import annotations

import threading
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from omniopd_verl.errors import PluginError
from omniopd_verl.protocols import REQUIRED_METHODS

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


def check_plugin_names(config: Any) -> None:
    """Raise ConfigError (key, value, installed names) for an unknown teacher, similarity or scheduler name
    in an OmniOPDConfig; imports nothing. Engines call it when they build a run, before loading a model."""
    from omniopd_verl.errors import ConfigError

    for kind, key, name in (
        ("teachers", "omniopd.teacher.name", config.teacher.name),
        ("similarity", "omniopd.similarity", config.similarity),
        ("schedulers", "omniopd.scheduler", config.scheduler),
    ):
        try:
            check_name(kind, name, key)
        except PluginError as exc:
            raise ConfigError(str(exc)) from None


def check_plugins(config: Any, *, resources: tuple[str, ...] = ()) -> None:
    """Build and check every plugin an OmniOPDConfig names, loading no model and calling no teacher: what
    `train --dry-run` (both engines) and `audit` run before anything heavy. Names installed; the similarity
    and scheduler constructed with their options (an unknown option names itself and the allowed ones; a
    value the plugin rejects becomes one ConfigError); the teacher's option names and values and its API
    key's variable (`teachers.library.check_teacher`). `resources`: names of what the engine will share
    with the teacher (the local engine: 'reference_model'). Raises ConfigError."""
    from omniopd_verl.teachers.library import check_teacher

    check_plugin_names(config)
    for kind, key, name, options in (
        ("similarity", "omniopd.similarity_options", config.similarity, config.similarity_options),
        ("schedulers", "omniopd.scheduler_options", config.scheduler, config.scheduler_options),
    ):
        _construct_checked(kind, key, name, dict(options))
    check_teacher(config.teacher.name, load("teachers", config.teacher.name), config.teacher, resources)


def _construct_checked(kind: str, key: str, name: str, options: dict[str, Any]) -> Any:
    """`load(kind, name)(**options)`, every failure a ConfigError naming `key`, the option and the plugin."""
    import inspect

    from omniopd_verl.config import unknown_key
    from omniopd_verl.errors import ConfigError

    factory = load(kind, name)
    kind = {"schedulers": "scheduler", "teachers": "teacher"}.get(
        kind, kind
    )  # in a sentence: "the ned similarity plugin"
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): let the call decide
        params = None
    if params is not None and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        allowed = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        for option in options:
            if option not in allowed:
                if not allowed:
                    raise ConfigError(f"unknown key {key}.{option}: the {name} {kind} plugin takes no options")
                raise ConfigError(f"{unknown_key(f'{key}.{option}', allowed)} (options of the {name} {kind} plugin)")
    try:
        return factory(**options)
    except ConfigError:
        raise
    except (PluginError, ValueError, TypeError) as exc:
        from omniopd_verl.teachers.secrets import mask_credentials

        raise ConfigError(f"{key}={mask_credentials(options)!r} rejected by the {name} {kind} plugin: {exc}") from None


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
                obj = ep.load()
            except Exception as exc:  # report which plugin broke and why, never a bare ImportError
                raise PluginError(
                    f"{kind} plugin {name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}"
                ) from exc
            missing = [m for m in REQUIRED_METHODS[kind] if not callable(getattr(obj, m, None))]
            if missing:
                raise PluginError(
                    f"{kind} plugin {name!r} ({ep.value}, from {provider(ep)}) lacks the required method "
                    f"{', '.join(missing)} of the {kind} protocol (omniopd_verl.protocols; see docs/teachers.md "
                    "for teachers)"
                )
            _loaded[key] = obj
        return _loaded[key]


def provider(ep: EntryPoint) -> str:
    """'<distribution> <version>' that installed an entry point ('unknown distribution' if metadata lacks it)."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown distribution"
    return f"{dist.metadata['Name']} {dist.version}"


def providers(kind: str) -> dict[str, str]:
    """name -> '<distribution> <version>' for every installed plugin of a kind; imports nothing."""
    return {name: provider(ep) for name, ep in sorted(_discover(kind).items())}


def create_teacher(config: Any, *, resources: dict[str, Any] | None = None, ledger: Any = None) -> Any:
    """The teacher `config.name` (a TeacherConfig), wrapped in the teacher library: what engines call.

    `resources` are objects an engine shares with the plugin, passed as `Plugin(config, resources=...)`,
    e.g. `{"reference_model": (model, tokenizer)}` for the `transformers` teacher's
    `options.model: reference` (the local engine's frozen reference copy). `ledger` is the run's teacher
    ledger (`teachers.ledger`; verl passes the Ray actor every reward worker shares); None = in-process.
    """
    from omniopd_verl.teachers.library import build_teacher

    return build_teacher(config.name, load("teachers", config.name), config, resources, ledger)


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
