"""Files that ship inside the package, named `pkg://<dotted.package>/<path>` (the idiom verl's Hydra uses).

A bare clone or a `pip install` has no `../shared` beside it, so the demo's recipe and data are package
resources: `pkg://omniopd_verl.config/local/quickstart_cpu.yaml`, `pkg://omniopd_verl.data/gsm8k_subset/train.jsonl`.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from omniopd_verl.errors import ConfigError

PREFIX = "pkg://"
QUICKSTART_RECIPE = "pkg://omniopd_verl.config/local/quickstart_cpu.yaml"
GSM8K_SUBSET = "pkg://omniopd_verl.data/gsm8k_subset"


def package_file(uri: str) -> Path:
    """The filesystem path of `pkg://package/rel/path` (installed packages are plain folders, never zips here)."""
    if not uri.startswith(PREFIX) or "/" not in uri[len(PREFIX) :]:
        raise ConfigError(f"{uri!r} is not a package file: allowed pkg://<dotted.package>/<path inside it>")
    package, _, rel = uri[len(PREFIX) :].partition("/")
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise ConfigError(f"{uri!r}: no installed package {package!r}") from None
    return Path(str(root)) / rel


def resolve(path: str | Path) -> Path:
    """A `pkg://` name as its file path; anything else unchanged."""
    return package_file(path) if str(path).startswith(PREFIX) else Path(path)
