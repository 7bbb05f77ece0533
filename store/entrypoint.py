"""What `mtp`, `mtp-tui` and `mtp-engine` share: the common arguments, the one data folder /
database / demo rule, the umask, and the one-line exit for a data folder that cannot be used.

The rule (README, "Where data lives"):
- `--home PATH`, else `$MTP_HOME`, else the platform's user data folder;
- `--demo` uses `<that folder>/demo` (or `--home` itself when given) with the demo's own SQLite
  file: an exported `$MTP_DB_URL` is ignored (and dropped for the engines it starts), `--db` is not;
- `--db URL`, else `$MTP_DB_URL`, else the SQLite file in the data folder. `--db` is passed on
  to started engines through the environment, so a password never shows in `ps`.
`--home`, `--db` and `--demo` mean the same before or after a subcommand (`mtp --demo score 4`
and `mtp score 4 --demo`).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import MtpError, StoreError
from .paths import Home, default_home, demo_home, set_umask
from .safe_text import safe_text
from .settings import ENV_PREFIX, check_settings

ENV_DB_URL = ENV_PREFIX + "DB_URL"

HOME_HELP = "data folder (default: $MTP_HOME, else the platform's user data folder)"
DB_HELP = (
    "database URL, e.g. postgresql+psycopg://user@host/mtp "
    "(default: $MTP_DB_URL, else the SQLite file in the data folder)"
)
DEMO_HELP = (
    "use the demo data folder (<data folder>/demo, or --home when given) with its own SQLite "
    "database ($MTP_DB_URL is ignored) and the offline tiny model"
)


def add_common_arguments(parser: argparse.ArgumentParser, *, again: bool = False) -> None:
    """--home, --db and --demo. `again=True` for subcommands: their defaults are SUPPRESS, so a
    value given before the subcommand is kept unless repeated after it."""
    unset = argparse.SUPPRESS if again else None
    parser.add_argument("--home", default=unset, help=HOME_HELP)
    parser.add_argument("--db", default=unset, help=DB_HELP)
    parser.add_argument(
        "--demo",
        action="store_true",
        dest="demo",
        default=argparse.SUPPRESS if again else False,
        help=DEMO_HELP,
    )


class SubcommandParser(argparse.ArgumentParser):
    """Parser class for subcommands (`add_subparsers(parser_class=SubcommandParser)`): each one
    takes the common arguments again, and nested subcommands inherit the class."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        add_common_arguments(self, again=True)


@dataclass(frozen=True)
class Where:
    """The data folder and database an entry point uses, once the rule has been applied."""

    home: Path
    db_url: str | None
    demo: bool

    def resolve_home(self, create: bool = True) -> Home:
        home = Home.resolve(self.home, create=False)
        if not create and (
            not home.root.is_dir() or (self.db_url is None and not home.db_path.exists())
        ):
            what = "no data folder" if not home.root.is_dir() else "no mtp database in"
            raise StoreError(
                f"{what} {home.root} (nothing was created): `mtp init` creates one, "
                f"`mtp demo` the demo's; or point --home / $MTP_HOME at an existing one"
            )
        if create:
            home.ensure()
        return home


def apply_rule(home: str | os.PathLike | None, db: str | None, demo: bool) -> Where:
    """The data folder / database / demo rule, for this process and the engines it starts."""
    if demo:
        root = demo_home(home)
        if not db:
            # The demo keeps its own SQLite record in its own folder, and so do engines it starts.
            os.environ.pop(ENV_DB_URL, None)
    else:
        root = Path(home).expanduser() if home else default_home()
    if db:
        os.environ[ENV_DB_URL] = db
    return Where(home=root.resolve(), db_url=db or os.environ.get(ENV_DB_URL) or None, demo=demo)


def start(prog: str, args: argparse.Namespace) -> Where:
    """Everything an entry point does before its own work: the settings checked, the umask set,
    the rule applied. Raises MtpError (see `exit_code`)."""
    check_settings()
    set_umask()
    return apply_rule(
        getattr(args, "home", None), getattr(args, "db", None), bool(getattr(args, "demo", False))
    )


def say(prog: str, exc: BaseException | str) -> None:
    """One line on stderr, `prog: message`, with user text made safe for the terminal."""
    print(f"{prog}: {safe_text(str(exc), multiline=True)}", file=sys.stderr)


def exit_code(prog: str, exc: MtpError) -> int:
    """The "cannot use this data folder" exit (and any other refusal at start): one line, code 2."""
    say(prog, exc)
    return 2
