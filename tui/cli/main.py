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
    "tui.cli.study",
]


def build_parser() -> argparse.ArgumentParser:
    from store.entrypoint import SubcommandParser, add_common_arguments

    parser = argparse.ArgumentParser(
        prog="mtp",
        description="mtp headless commands: concepts, experiments, runs, queue control and export.",
    )
    add_common_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=SubcommandParser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    from store.db import open_store
    from store.entrypoint import exit_code, say, start
    from store.errors import MtpError

    # `mtp demo` always writes the demo folder; `mtp engine start --demo` serves it.
    args.demo = bool(args.demo or getattr(args, "uses_demo_home", False))
    try:
        where = start("mtp", args)
        # Only commands that make something new create a data folder; the others say where
        # they looked instead of leaving an empty folder behind.
        store = open_store(where.resolve_home(create=getattr(args, "creates_home", False)))
    except MtpError as exc:
        return exit_code("mtp", exc)
    from sqlalchemy.exc import DBAPIError, IntegrityError

    try:
        return int(args.func(args, store) or 0)
    except MtpError as exc:
        say("mtp", exc)
        return 2
    except BrokenPipeError:
        # `mtp show 53 | head`: the reader left; that is not an error worth a traceback.
        _silence_stdout()
        return 0
    except DBAPIError as exc:
        if isinstance(exc, IntegrityError):
            raise  # a bug, not the machine: keep the traceback
        say("mtp", store.explain(exc))
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
