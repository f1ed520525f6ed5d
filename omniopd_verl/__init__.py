"""omniopd-verl: logit-free on-policy distillation (OmniOPD) as a plugin framework for verl.

Importing this package is cheap on purpose (no torch, verl, litellm or sentence-transformers):
verl imports our `verl.plugins` entry point in every worker, and the CLI must start fast.
"""

__version__ = "0.1.0"

from omniopd_verl.errors import ConfigError, GuardError, OmniOPDError, PluginError  # noqa: E402

__all__ = ["__version__", "ConfigError", "GuardError", "OmniOPDError", "PluginError"]
