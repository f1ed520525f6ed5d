"""Example OmniOPD plugins, discovered through entry points declared in this package's pyproject.toml."""
