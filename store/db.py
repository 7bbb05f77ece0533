"""Database setup: SQLite in WAL mode shared by the app and any number of engines, or PostgreSQL
(`MTP_DB_URL` / `--db`) shared by engines on several hosts.

Writers use `Store.write()`, which begins with BEGIN IMMEDIATE on SQLite: a deferred transaction
that reads and then writes can fail at once with "database is locked" when another process
committed in between (WAL snapshot upgrade), without waiting on the busy timeout.

The database and its data folder belong together (artifact paths in the record are relative to
the folder): the first start writes one random id into both, and a Store whose folder carries
another id, or none, refuses to open (`WrongHome`) instead of writing images nobody else sees.
"""

from __future__ import annotations

import os
import re
import secrets
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, SQLModel, create_engine, select

from . import models  # noqa: F401  (registers the tables)
from .models import Meta
from .paths import Home, StoreError
from .settings import settings

__all__ = [
    "Store",
    "StoreError",
    "SchemaTooNew",
    "WrongHome",
    "open_store",
    "mask_url",
    "use_db_url",
    "db_url_from",
    "db_now",
    "describe_db_error",
]

SCHEMA_VERSION = 7
BUSY_TIMEOUT_MS = 30_000
ENV_DB_URL = "MTP_DB_URL"
HOME_ID_KEY = "home_id"
HOME_PATH_KEY = "home_path"  # where the folder was when the id was written: a hint for messages
# pg_advisory_xact_lock key for schema creation and migrations (any constant bigint; "mtp-schema").
SCHEMA_LOCK_KEY = 0x6D74702D736368

# Screens showing runs poll this meta row and reload only when it moved. It is bumped in the
# same transaction as any write to these tables, so it works for every process and on any
# database (SQLite's PRAGMA data_version only sees other connections, PostgreSQL has none).
CHANGE_KEY = "change_counter"
_WATCHED_TABLES = {"run", "score", "experiment", "concept"}
_WRITE_RE = re.compile(
    r'^\s*(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|UPDATE|DELETE\s+FROM)\s+"?(\w+)"?', re.I
)
_CHANGED = "mtp_changed"


class SchemaTooNew(StoreError):
    pass


class WrongHome(StoreError):
    """The data folder is not the one this database records its artifacts in."""


def mask_url(url: str) -> str:
    """The URL with its password hidden, for titles, logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show nothing secret
        return url.split("@")[-1]


def use_db_url(arg: str | None) -> None:
    """`--db` of mtp / mtp-tui: the same as $MTP_DB_URL for this process and the engines it starts
    (through the environment, so a password never shows in `ps`)."""
    if arg:
        os.environ[ENV_DB_URL] = arg


def db_url_from(arg: str | None = None) -> str | None:
    """`--db` wins over $MTP_DB_URL; None means the SQLite file in the data folder."""
    return arg or settings().db_url or None


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000}
    )
    path = make_url(url).database

    @event.listens_for(engine, "do_connect")
    def _open_existing(dialect, _record, _cargs, cparams):
        # Once the schema is there (Store sets `exists`), a new connection only opens the file:
        # one deleted under an engine stays gone, for the rescue copy to be moved back, instead
        # of coming back empty under every process that connects next.
        if not (path and path != ":memory:" and engine.info_exists):
            return None
        uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=rw"
        return dialect.loaded_dbapi.connect(uri, uri=True, **cparams)

    engine.info_exists = False

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Take transaction control away from the driver so BEGIN can be IMMEDIATE when asked.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # The timeout first: switching to WAL takes a lock, and a process creating the schema
        # holds one; under load that outlasted the driver's 5 s default ("database is locked").
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _watch_writes(engine: Engine) -> None:
    @event.listens_for(engine, "before_cursor_execute")
    def _note_write(conn, _cursor, statement, _params, _context, _executemany):
        m = _WRITE_RE.match(statement)
        if m and m.group(1).lower() in _WATCHED_TABLES:
            conn.info[_CHANGED] = True


@dataclass(frozen=True)
class Only:
    """A migration statement for one SQL dialect ("postgresql", "sqlite") only."""

    dialect: str
    sql: str


@dataclass(frozen=True)
class AddColumn:
    """ALTER TABLE ... ADD COLUMN, skipped when the column is there (SQLite has no IF NOT EXISTS)."""

    table: str
    column: str
    ddl: str  # the column's type and default, e.g. "INTEGER NOT NULL DEFAULT 0"

    @property
    def sql(self) -> str:
        return f"ALTER TABLE {self.table} ADD COLUMN {self.column} {self.ddl}"


# Each migration upgrades from version N-1 to N; keep them additive so no data is lost.
MIGRATIONS: dict[int, list[str | Only | AddColumn]] = {
    2: [
        # the inversion guidance of each run (a sweep field); every inversion before it ran at 1.0
        AddColumn("run", "inversion_guidance", "FLOAT"),
        "UPDATE run SET inversion_guidance = 1.0 WHERE invert AND source_image IS NOT NULL",
        # seeds are 64-bit (SQLite's INTEGER already is; PostgreSQL made it int4).
        Only("postgresql", "ALTER TABLE run ALTER COLUMN seed TYPE BIGINT"),
        # "not scored" reason and the engine session of a run (the new tables enginesession and
        # scorerequest are created by create_all below).
        AddColumn("run", "score_error", "TEXT"),
        AddColumn("run", "session_id", "INTEGER"),
        # the runs browser counts marked runs on every page load
        "CREATE INDEX IF NOT EXISTS ix_run_marked ON run (marked)",
        # engine deaths while a run was being generated (attempts only count claims)
        AddColumn("run", "crashes", "INTEGER NOT NULL DEFAULT 0"),
    ],
    3: [
        # runs sorted by a score page through ix_score_sort (store.queries.list_runs); ix_score_run
        # replaces the run_id index, so per-run score reads never pick ix_score_sort
        "CREATE INDEX IF NOT EXISTS ix_score_run ON score (run_id, metric, value)",
        "DROP INDEX IF EXISTS ix_score_run_id",
        "CREATE INDEX IF NOT EXISTS ix_score_sort ON score (metric, backbone, value, run_id)",
    ],
    4: [
        # the consistency method of each run; every run before it was MasaCtrl's
        AddColumn("run", "method", "VARCHAR NOT NULL DEFAULT 'masactrl'"),
        AddColumn("run", "method_params", "TEXT NOT NULL DEFAULT ''"),
        "CREATE INDEX IF NOT EXISTS ix_run_method ON run (method)",
    ],
    5: [
        # every score names the engine session that computed it (a rescoring engine records its
        # own); older scores keep NULL: who computed them was not recorded
        AddColumn("score", "session_id", "INTEGER REFERENCES enginesession (id)"),
        AddColumn("enginesession", "role", "VARCHAR NOT NULL DEFAULT 'generate'"),
        AddColumn("enginesession", "scorer_device", "VARCHAR NOT NULL DEFAULT ''"),
        AddColumn("enginesession", "scorer_dtype", "VARCHAR NOT NULL DEFAULT ''"),
        AddColumn("enginesession", "preprocess_json", "TEXT NOT NULL DEFAULT '{}'"),
    ],
    6: [
        # engines started as SLURM jobs record their job and node (NULL for engines started by hand)
        AddColumn("worker", "slurm_job_id", "VARCHAR"),
        AddColumn("worker", "slurm_node", "VARCHAR"),
    ],
    7: [
        # benchmark studies: an experiment per suite unit (the tables suite, suiteunit and study
        # are created by create_all below); experiments made by hand keep NULL
        # (no REFERENCES: the tables they point at do not exist yet when this runs)
        AddColumn("experiment", "study_id", "INTEGER"),
        AddColumn("experiment", "unit_id", "INTEGER"),
        "CREATE INDEX IF NOT EXISTS ix_experiment_study_id ON experiment (study_id)",
        # runs in flight with others when an engine died: retried alone, not charged
        AddColumn("run", "solo", "BOOLEAN NOT NULL DEFAULT FALSE"),
    ],
}


def _pg_engine(url: str) -> Engine:
    # Timestamps are stored without a zone and read back as UTC (store.queue._aware), so the
    # session zone must be UTC whatever the server's default is.
    args: dict = {"options": "-c timezone=UTC"}
    if "connect_timeout" not in url:
        # An unreachable host would otherwise hang a paused engine's probe for minutes (the
        # TCP timeout); the probe must say "not yet" quickly so a return is seen within seconds.
        args["connect_timeout"] = 5
    return create_engine(url, pool_pre_ping=True, connect_args=args)


def db_now(s) -> datetime:
    """The database's clock (UTC, aware), read inside a session or connection.

    Heartbeats, claims and the staleness checks all use it, never a host's clock: engines on
    hosts whose clocks disagree still agree on how old a heartbeat is. PostgreSQL's is the
    server's; SQLite's is computed in each process, from that process's clock.
    """
    conn = s.connection() if hasattr(s, "connection") else s
    if conn.dialect.name == "sqlite":
        from .models import clock_offset

        value = conn.exec_driver_sql("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')").scalar()
        # SQLite runs in this process, so its clock is this host's: a host clock shifted for
        # tests shifts it too, as libfaketime would (store.queue._is_dead copes with that).
        dt = datetime.fromisoformat(value) + clock_offset()
    else:
        # now() is a timestamptz: psycopg returns it aware, whatever the session's zone.
        dt = conn.exec_driver_sql("SELECT now()").scalar()
        if dt.tzinfo is not None:
            return dt.astimezone(UTC)
    return dt.replace(tzinfo=UTC)


# What a database error means, in words for a person; the driver's own text (SQL, constraint
# names, psycopg's multi-line messages) stays in the log.
_DB_ERROR_WORDS = (
    (
        ("connection refused", "could not connect", "connection to server", "no route to host"),
        "the database server cannot be reached",
    ),
    (
        (
            "server closed the connection",
            "terminating connection",
            "connection is closed",
            "ssl connection has been closed",
            "consuming input failed",
            "connection already closed",
        ),
        "the connection to the database server was lost",
    ),
    (("timeout expired", "timed out"), "the database server does not answer"),
    (
        ("the database system is starting up", "the database system is shutting down"),
        "the database server is restarting",
    ),
    (("disk is full", "no space left", "could not extend file"), "the database's disk is full"),
    (("readonly", "read-only"), "the database is read-only"),
    (("database is locked",), "the database stayed locked by another process"),
    (("disk i/o error",), "the database file cannot be read or written (disk I/O error)"),
    (("unable to open",), "the database file cannot be opened"),
    (("not a database", "malformed"), "the database file is damaged"),
    (("too many connections", "remaining connection slots"), "the database server is full"),
    (("duplicate key", "unique constraint"), "the database refused a duplicate record"),
    (("password authentication failed",), "the database refused the login"),
)


def describe_db_error(exc: BaseException) -> str:
    """A short, clear sentence for a database error, fit to show a person (no SQL, no driver text)."""
    why = str(getattr(exc, "orig", None) or exc).lower()
    for needles, words in _DB_ERROR_WORDS:
        if any(n in why for n in needles):
            return words
    kind = type(getattr(exc, "orig", None) or exc).__name__
    return f"the database refused the operation ({kind}; details in the engine log)"


class Store:
    """One database: sessions for reading and for writing, plus the home it lives in."""

    def __init__(self, home: Home | None = None, url: str | None = None):
        self.home = home or Home.resolve()
        self.url = db_url_from(url) or self.home.db_url
        self.is_sqlite = self.url.startswith("sqlite")
        # A database this Store creates and then refuses (another folder's id) is removed again:
        # no command leaves behind a database it would not use.
        new_file = self._sqlite_file() if self.is_sqlite else None
        if new_file is not None and os.path.exists(new_file):
            new_file = None
        try:
            self.engine = _sqlite_engine(self.url) if self.is_sqlite else _pg_engine(self.url)
        except ImportError as exc:
            raise StoreError(
                f"cannot use {self.display_url}: its driver is not installed ({exc.name or exc}); "
                f"for PostgreSQL: pip install 'mtp[postgres]'"
            ) from None
        self._write_engine = (
            self.engine.execution_options(sqlite_immediate=True) if self.is_sqlite else self.engine
        )
        _watch_writes(self.engine)
        try:
            self._migrate()
            if self.is_sqlite:
                self.engine.info_exists = True
        except DBAPIError as exc:
            self.engine.dispose()
            self._remove_new_file(new_file)
            raise StoreError(self.explain(exc)) from None
        except BaseException:
            self.engine.dispose()
            self._remove_new_file(new_file)
            raise

    def _sqlite_file(self) -> str | None:
        db = make_url(self.url).database
        return db if db and db != ":memory:" and not db.startswith("file:") else None

    @staticmethod
    def _remove_new_file(path: str | None) -> None:
        for p in (path, f"{path}-wal", f"{path}-shm") if path else ():
            try:
                os.unlink(p)
            except OSError:
                pass

    @property
    def display_url(self) -> str:
        return mask_url(self.url)

    @property
    def where(self) -> str:
        """Which record and which data folder this is (the password masked), for titles."""
        db = "SQLite in the data folder" if self.owns_folder else self.display_url
        return f"{db} · data {self.home.root}"

    @property
    def owns_folder(self) -> bool:
        """The database is the SQLite file inside its data folder (they cannot be mismatched)."""
        return self.url == self.home.db_url

    def explain(self, exc: DBAPIError) -> str:
        """What an unusable database means for the person who tried to open it."""
        why = str(getattr(exc, "orig", None) or exc)
        where = self.home.db_path if self.owns_folder else self.display_url
        low = why.lower()
        if "not a database" in low or "malformed" in low:
            return (
                f"{where} is not a readable mtp database ({why}); move it aside and run `mtp init` "
                f"for a new one, or restore a backup"
            )
        if "readonly" in low or "read-only" in low or "unable to open" in low:
            return (
                f"cannot open {where} for writing ({why}); the data folder {self.home.root} and the "
                f"database must be writable by you (or choose another with --home / $MTP_HOME)"
            )
        if "disk is full" in low or "no space" in low:
            return f"cannot write {where}: the disk is full ({why}); free some space and retry"
        return f"cannot open the database {where}: {why}"

    # ------------------------------------------------------------------ sessions
    def session(self) -> Session:
        """For reads (and writes that do not read first)."""
        return Session(self.engine, expire_on_commit=False)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction holding the write lock from its first statement; commits on exit."""
        with Session(self._write_engine, expire_on_commit=False) as s:
            try:
                s.connection().info.pop(_CHANGED, None)
                yield s
                s.flush()  # ORM changes reach the database here, so the check below sees them
                if s.connection().info.pop(_CHANGED, False):
                    s.execute(
                        text(
                            "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS VARCHAR) "
                            "WHERE key = :k"
                        ),
                        {"k": CHANGE_KEY},
                    )
                s.commit()
            except BaseException:
                s.rollback()
                raise

    # ------------------------------------------------------------------ schema
    def _migrate(self) -> None:
        # One code path for both databases: the first statement takes a database-wide lock (BEGIN
        # IMMEDIATE on SQLite, an advisory lock on PostgreSQL), so engines starting together on
        # an empty database create the schema once and the others see it, instead of racing.
        with self.write() as s:
            conn = s.connection()
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
            existing = set(inspect(conn).get_table_names())
            if "meta" not in existing:
                SQLModel.metadata.create_all(conn)
                s.merge(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            else:
                row = s.get(Meta, "schema_version")
                version = int(row.value) if row else 1
                if version > SCHEMA_VERSION:
                    raise SchemaTooNew(
                        f"{self.display_url} has schema version {version}, newer than this mtp "
                        f"({SCHEMA_VERSION}); upgrade mtp"
                    )
                for v in range(version + 1, SCHEMA_VERSION + 1):
                    for stmt in MIGRATIONS.get(v, []):
                        if isinstance(stmt, Only):
                            if stmt.dialect != conn.dialect.name:
                                continue
                            stmt = stmt.sql
                        elif isinstance(stmt, AddColumn):
                            # a table an older version lacks is created whole below
                            if stmt.table not in set(inspect(conn).get_table_names()):
                                continue
                            if stmt.column in {
                                c["name"] for c in inspect(conn).get_columns(stmt.table)
                            }:
                                continue
                            stmt = stmt.sql
                        s.exec(text(stmt))
                # New tables (never columns) can simply be created.
                SQLModel.metadata.create_all(conn)
                s.merge(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            if s.get(Meta, CHANGE_KEY) is None:
                s.add(Meta(key=CHANGE_KEY, value="0"))
            self._check_home(s)

    def _check_home(self, s: Session) -> None:
        """Tie the database to its data folder, or refuse a folder that is not it (see module doc)."""
        row = s.get(Meta, HOME_ID_KEY)
        db_id = row.value if row else None
        file_id = self.home.read_id()
        if db_id and db_id == file_id:
            return
        if db_id is None and (file_id is None or self.owns_folder):
            new_id = file_id or secrets.token_hex(16)
            s.merge(Meta(key=HOME_ID_KEY, value=new_id))
            s.merge(Meta(key=HOME_PATH_KEY, value=str(self.home.root)))
            # Written before the commit: if it cannot be written, nothing claims this folder.
            self.home.write_id(new_id)
            return
        if db_id and file_id is None and self.owns_folder:
            self.home.write_id(db_id)  # an older copy of mtp made this folder
            return
        seen = s.get(Meta, HOME_PATH_KEY)
        where = f" (first set up at {seen.value})" if seen and seen.value else ""
        if db_id is None:
            raise WrongHome(
                f"the data folder {self.home.root} belongs to another database (id {file_id} in "
                f"{self.home.id_path}), not to {self.display_url}: give this database its own data folder "
                f"(--home / $MTP_HOME), or point --db / $MTP_DB_URL at the database of that folder"
            )
        if file_id is None:
            raise WrongHome(
                f"{self.display_url} keeps its images in the data folder with id {db_id}{where}, but "
                f"{self.home.root} has no {self.home.id_path.name}: mount that shared folder here (it may be at "
                f"another path on this host) and pass its path with --home or $MTP_HOME"
            )
        raise WrongHome(
            f"{self.home.root} is the data folder of another database (id {file_id}); {self.display_url} "
            f"keeps its images in the folder with id {db_id}{where}: mount that folder and pass its path "
            f"with --home or $MTP_HOME, or use --db / $MTP_DB_URL of the database this folder belongs to"
        )

    def change_token(self) -> str:
        """Moves whenever runs, scores, experiments or concepts change (one indexed row read)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                text("SELECT value FROM meta WHERE key = :k"), {"k": CHANGE_KEY}
            ).first()
        return row[0] if row else ""

    def schema_version(self) -> int:
        with self.session() as s:
            row = s.get(Meta, "schema_version")
            return int(row.value) if row else 0

    # ------------------------------------------------------------------ meta flags
    def get_meta(self, key: str, default: str = "") -> str:
        with self.session() as s:
            row = s.exec(select(Meta).where(Meta.key == key)).first()
            return row.value if row else default

    def set_meta(self, key: str, value: str) -> None:
        # An upsert, not merge(): merge reads then inserts, and two processes setting a new key
        # at once made one fail on the primary key.
        with self.write() as s:
            s.execute(
                text(
                    "INSERT INTO meta (key, value) VALUES (:k, :v) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                ),
                {"k": key, "v": value},
            )

    def now(self) -> datetime:
        """The database's clock (see db_now)."""
        with self.session() as s:
            return db_now(s)

    def close(self) -> None:
        self.engine.dispose()


def open_store(home: Home | str | os.PathLike | None = None, url: str | None = None) -> Store:
    """The data folder's store; raises StoreError with a message fit to show as is."""
    return Store(home if isinstance(home, Home) else Home.resolve(home), url=url)
