"""One way to configure every command: `--config FILE.yaml` plus `key=value` overrides.

`omniopd-verl train` (both engines), `audit` and `eval` read the same YAML file and the same override
lines, with Hydra's grammar (the verl engine hands its overrides to Hydra itself, so a line means the same
everywhere):

    key=value      set a key that exists: a field of the node's dataclass, or a key the file already has
    +key=value     add a key that is not there yet: a plugin option under omniopd.teacher.options,
                   omniopd.similarity_options or omniopd.scheduler_options (a field is always there)
    ++key=value    set the key, adding it when it is not there

Values are YAML, as Hydra reads them: 2 is an int, 2.0 a float, null None, [1, 2] a list, {a: 1} a
mapping, anything else a string. A key that no dataclass field has fails with "unknown key omniopd.alpah;
did you mean alpha?", with or without '+' (nothing would read it). The free-form option maps take any key.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omniopd_verl.config import unknown_key
from omniopd_verl.errors import ConfigError

MODES = {"": "set", "+": "add", "++": "force"}


@dataclass(frozen=True)
class Override:
    """One `[+|++]key=value` line."""

    key: str
    value: Any
    mode: str  # "set" | "add" | "force"
    text: str


@functools.cache  # one Loader class per process: parse_value runs once per override value
def yaml_loader() -> type:
    """PyYAML's safe loader reading floats as Hydra and OmegaConf do: plain YAML 1.1 reads `1e-5` (no dot) as
    the string '1e-5', so `local.lr=1e-5` would be refused as a non-number. Same pattern as OmegaConf's loader."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+][0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
            re.X,
        ),
        list("-+0123456789."),
    )
    return Loader


def parse_value(text: str) -> Any:
    """A YAML scalar or flow collection, as Hydra reads an override's value; '' stays ''."""
    import yaml

    if text == "":
        return ""
    try:
        return yaml.load(text, Loader=yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        return text


def parse_override(item: str, example: str = "omniopd.alpha=2.0") -> Override:
    """`key=value`, `+key=value` or `++key=value`; anything else is a ConfigError showing the grammar."""
    prefix = "++" if item.startswith("++") else "+" if item.startswith("+") else ""
    key, sep, value = item[len(prefix) :].partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"override {item!r} is invalid: allowed key=value (set), +key=value (add a key) or ++key=value "
            f"(set or add), e.g. {example}"
        )
    return Override(key, parse_value(value), MODES[prefix], item)


def read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level mapping of a YAML file (`pkg://package/path` for a shipped one); a missing file, a
    syntax error (with the line) or a non-mapping is a ConfigError naming the file."""
    import yaml

    from omniopd_verl.package_files import resolve

    shown = str(path)
    path = resolve(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        raise ConfigError(f"--config {shown!r}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {shown!r} cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(
            f"--config {shown}{where} is not valid YAML: {getattr(exc, 'problem', None) or exc}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {shown!r} is invalid: allowed a YAML mapping of nodes (omniopd:, ...)")
    return data


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str | Override], schemas: Mapping[str, Any]) -> dict:
    """`data` (the file's nodes, plain containers) with every override applied, in order.

    `schemas` maps each top-level node an override may name to its dataclass (an instance with the
    defaults, or the class when it builds without arguments): a dataclass field always exists; under a
    mapping-valued field (a plugin's options) a key exists when `data` has it."""
    out = _copy(dict(data))
    defaults = {node: schema() if isinstance(schema, type) else schema for node, schema in schemas.items()}
    example = next((f"{node}.{f.name}=..." for node, d in defaults.items() for f in dataclasses.fields(d)), "key=value")
    for item in overrides:
        ov = item if isinstance(item, Override) else parse_override(item, example)
        node, *path = ov.key.split(".")
        if node not in defaults:
            import difflib

            close = difflib.get_close_matches(node, list(defaults), n=1)
            hint = f"did you mean {close[0]}.{'.'.join(path)}?" if close else f"allowed nodes: {sorted(defaults)}"
            raise ConfigError(f"unknown key {ov.key}: this command reads no {node}: node; {hint}")
        _apply(out.setdefault(node, {}), defaults[node], node, path, ov)
    return out


def shortcut_overrides(flags: Mapping[str, tuple[str, Any]], overrides: Sequence[str]) -> list[Override]:
    """A command's shortcut flags as overrides that go before the `key=value` lines: `flags` maps a dotted
    key to (the flag that set it, its value). A key set by a flag and by an override is a ConfigError
    (which one was meant?)."""
    given = {}
    for item in overrides:
        ov = parse_override(item)
        given.setdefault(ov.key, ov.text)
    out = []
    for key, (flag, value) in flags.items():
        if key in given:
            raise ConfigError(f"{key} is given twice, by {flag} and by {given[key]!r}: keep one")
        out.append(Override(key, value, "force", flag))
    return out


def load_config(
    path: str | os.PathLike | None,
    overrides: Sequence[str],
    schemas: Mapping[str, Any],
    *,
    other_nodes: str = "error",
    flags: Mapping[str, tuple[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The nodes of `schemas` from `--config FILE` (or none), then the shortcut `flags` (see
    shortcut_overrides), then the overrides, interpolations (`${...}`) resolved, as plain containers; a
    node the file lacks is {}. Other top-level keys of the file: `other_nodes="error"` refuses them (a run
    file for this command only), "ignore" leaves them (a file shared with other commands, e.g. a local run
    file given to `audit`, whose `local:` node audit does not read)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    data = read_yaml_mapping(path) if path is not None else {}
    unknown = sorted(set(data) - set(schemas))
    if unknown and other_nodes == "error":
        raise ConfigError(f"--config {str(path)!r} has unknown top-level keys {unknown}; allowed: {sorted(schemas)}")
    for key in unknown:  # a node left for other commands, unless it is a misspelling of one read here
        import difflib

        close = difflib.get_close_matches(str(key), list(schemas), n=1, cutoff=0.75)
        if close:
            raise ConfigError(f"--config {str(path)!r}: unknown top-level key {key}; did you mean {close[0]}?")
    lines = [*shortcut_overrides(flags or {}, overrides), *overrides]
    merged = apply_overrides({k: v for k, v in data.items() if k in schemas}, lines, schemas)
    out = {}
    for node in schemas:
        value = merged.get(node)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{node}={value!r} is invalid: allowed a mapping of {node} settings")
        try:
            out[node] = OmegaConf.to_container(OmegaConf.create({node: value}), resolve=True)[node]
        except OmegaConfBaseException as exc:
            raise ConfigError(f"could not resolve the {node}: node: {exc}".replace("\n", " ")) from None
    return out


def _apply(target: Any, default: Any, where: str, path: list[str], ov: Override) -> None:
    if not path:
        raise ConfigError(
            f"override {ov.text!r} is invalid: {where} is a node; set one of its keys, e.g. {where}.KEY=..."
        )
    if not isinstance(target, dict):
        raise ConfigError(f"override {ov.text!r} is invalid: {where} is a value, not a node")
    part, rest = path[0], path[1:]
    key = f"{where}.{part}"
    if dataclasses.is_dataclass(default):
        names = [f.name for f in dataclasses.fields(default)]
        if part not in names:
            raise unknown_key(key, names)
        child = getattr(default, part)
        if rest:
            if not dataclasses.is_dataclass(child) and not isinstance(child, dict):
                raise ConfigError(f"override {ov.text!r} is invalid: {key} is a value, not a node")
            _apply(target.setdefault(part, {}), child, key, rest, ov)
            return
        if ov.mode == "add":
            raise ConfigError(
                f"override {ov.text!r} is invalid: {key} is already a key; write {ov.text.lstrip('+')} "
                "('+' adds a key that is not there yet, such as a plugin option)"
            )
        target[part] = ov.value
        return
    # a free-form mapping (a plugin's options): a key exists when the file (or an earlier override) set it
    exists = part in target
    if rest:
        if not exists and ov.mode == "set":
            raise _missing(key, ov)
        _apply(target.setdefault(part, {}), {}, key, rest, ov)
        return
    if ov.mode == "set" and not exists:
        raise _missing(key, ov)
    if ov.mode == "add" and exists:
        raise ConfigError(
            f"override {ov.text!r} is invalid: {key} is already set; write {ov.text.lstrip('+')} to change it"
        )
    target[part] = ov.value


def _missing(key: str, ov: Override) -> ConfigError:
    return ConfigError(
        f"override {ov.text!r} is invalid: {key} is not set, so there is nothing to override; add it with "
        f"+{ov.text.lstrip('+')} (as Hydra, and so the verl engine, requires)"
    )


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
