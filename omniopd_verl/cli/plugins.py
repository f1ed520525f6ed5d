"""`omniopd-verl plugins`: list the installed teacher, similarity and scheduler plugins (imports none)."""

from __future__ import annotations

import argparse

HELP = "list installed OmniOPD plugins by kind"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--load", action="store_true", help="also import each plugin to check it loads")


def run(args: argparse.Namespace) -> int:
    from omniopd_verl import registry
    from omniopd_verl.errors import PluginError

    failed = 0
    for kind, group in registry.GROUPS.items():
        print(f"{kind} ({group}):")
        for name in registry.available(kind):
            status = ""
            if args.load:
                try:
                    registry.load(kind, name)
                    status = "  ok"
                except PluginError as exc:
                    status, failed = f"  FAILED: {exc}", failed + 1
            print(f"  {name}{status}")
    return 1 if failed else 0
