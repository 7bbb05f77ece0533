"""`mtp`: headless commands over the same database the app and the engine use.

Each command module registers its own subcommands (`register(sub)`), and each handler takes
(args, store) and returns an exit code. Imports stay lazy so `mtp --help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that add subcommands; one line each.
COMMAND_MODULES = [
    "tui.cli.basic",
    "tui.cli.export",
    "tui.cli.queue",
    "tui.cli.show",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtp",
        description="mtp headless commands: concepts, experiments, runs, queue control and export.",
    )
    parser.add_argument("--home", help="data folder (default: $MTP_HOME or the platform data dir)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    from store.db import StoreError, open_store
    from store.paths import set_umask
    from store.sweep.grammar import SweepError
    from store.queries import InputError

    set_umask()
    try:
        store = open_store(args.home)
    except StoreError as exc:
        print(f"mtp: {exc}", file=sys.stderr)
        return 2
    from sqlalchemy.exc import DBAPIError, IntegrityError

    try:
        return int(args.func(args, store) or 0)
    except (InputError, SweepError) as exc:
        print(f"mtp: {exc}", file=sys.stderr)
        return 2
    except DBAPIError as exc:
        if isinstance(exc, IntegrityError):
            raise  # a bug, not the machine: keep the traceback
        print(f"mtp: {store.explain(exc)}", file=sys.stderr)
        return 2
    finally:
        store.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
