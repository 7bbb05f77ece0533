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
    "tui.cli.score",
    "tui.cli.show",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtp",
        description="mtp headless commands: concepts, experiments, runs, queue control and export.",
    )
    parser.add_argument("--home", help="data folder (default: $MTP_HOME or the platform data dir)")
    parser.add_argument(
        "--db",
        help="database URL, e.g. postgresql+psycopg://user@host/mtp "
        "(default: $MTP_DB_URL, else the SQLite file in the data folder)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        dest="use_demo",
        help="use the demo data folder (<data folder>/demo, where `mtp demo` writes)",
    )
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
    import os

    from store.db import StoreError, open_store, use_db_url
    from store.paths import demo_home, set_umask
    from store.queries import InputError
    from store.sweep.grammar import SweepError

    from .out import echo  # errors echo names and paths: shown safe like all output

    # The demo lives in its own folder so it never mixes with real work.
    # (`mtp engine start --demo` too: like `mtp-engine --demo`, it serves the demo folder.)
    demo = (
        args.use_demo
        or getattr(args, "uses_demo_home", False)
        or (args.command == "engine" and getattr(args, "demo", False))
    )
    args.use_demo = demo
    home = demo_home(args.home) if demo else args.home
    if demo and not args.db:
        # The demo keeps its own SQLite record in its own folder, and so do engines it starts.
        os.environ.pop("MTP_DB_URL", None)
    use_db_url(args.db)
    set_umask()
    try:
        store = open_store(home)
    except StoreError as exc:
        echo(f"mtp: {exc}", file=sys.stderr)
        return 2
    from sqlalchemy.exc import DBAPIError, IntegrityError

    try:
        return int(args.func(args, store) or 0)
    except (InputError, SweepError) as exc:
        echo(f"mtp: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `mtp show 53 | head`: the reader left; that is not an error worth a traceback.
        _silence_stdout()
        return 0
    except DBAPIError as exc:
        if isinstance(exc, IntegrityError):
            raise  # a bug, not the machine: keep the traceback
        echo(f"mtp: {store.explain(exc)}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
