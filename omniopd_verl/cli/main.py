"""`omniopd-verl <subcommand>`: dispatch to the subcommand modules listed in SUBCOMMANDS.

Subcommand modules keep their heavy imports (torch, verl, litellm) inside `run`, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from omniopd_verl import __version__

# name -> module providing HELP, add_arguments(parser) and run(args) -> int
SUBCOMMANDS: dict[str, str] = {
    "plugins": "omniopd_verl.cli.plugins",
    "audit": "omniopd_verl.cli.audit",
    "data": "omniopd_verl.cli.data",
    "eval": "omniopd_verl.cli.eval",
    "train": "omniopd_verl.cli.train",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omniopd-verl", description="OmniOPD: logit-free on-policy distillation on verl."
    )
    parser.add_argument("--version", action="version", version=f"omniopd-verl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. A project error becomes one line on stderr, never a traceback: exit 2 for bad
    input or configuration (ConfigError: the message names the file/line, key or flag), 1 for any other
    OmniOPDError (a failed teacher, a violated guard)."""
    from omniopd_verl.errors import ConfigError, OmniOPDError

    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ConfigError as exc:
        print(f"omniopd-verl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OmniOPDError as exc:
        print(f"omniopd-verl {args.command}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
