"""The exceptions OmniOPD raises. Each message names what was wrong, the value, and what is allowed."""


class OmniOPDError(Exception):
    """Base class of every error raised on purpose by omniopd-verl."""


class ConfigError(OmniOPDError, ValueError):
    """A configuration value is invalid. The message names the key, the value and what is allowed."""


class GuardError(OmniOPDError, ValueError):
    """An algorithm invariant from ALGORITHM.md ("Guards") was violated: never silently fall back."""


class PluginError(OmniOPDError, LookupError):
    """A plugin name is unknown, or a plugin failed to import. The message lists the installed names."""
