"""`omniopd-verl plugins`: list the installed teacher, similarity and scheduler plugins, with the
distribution and version that provides each (read from installed metadata; imports none)."""

from __future__ import annotations

import argparse

HELP = "list installed OmniOPD plugins by kind, with the package that provides each"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--load", action="store_true", help="also import each plugin and check it has its protocol's methods"
    )


def run(args: argparse.Namespace) -> int:
    from omniopd_verl import registry
    from omniopd_verl.errors import PluginError

    failed = 0
    for kind, group in registry.GROUPS.items():
        print(f"{kind} ({group}):")
        providers = registry.providers(kind)
        width = max((len(n) for n in providers), default=0)
        for name, provider in providers.items():
            status = ""
            if args.load:
                try:
                    registry.load(kind, name)
                    status = "  ok"
                except PluginError as exc:
                    status, failed = f"  FAILED: {exc}", failed + 1
            print(f"  {name:<{width}}  from {provider}{status}")
    return 1 if failed else 0
