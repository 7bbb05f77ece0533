"""Database setup: SQLite in WAL mode shared by the app and any number of engines.

Writers use `Store.write()`, which begins with BEGIN IMMEDIATE: a deferred transaction that
reads and then writes can fail at once with "database is locked" when another process
committed in between (WAL snapshot upgrade), without waiting on the busy timeout.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, SQLModel, create_engine, select

from . import models  # noqa: F401  (registers the tables)
from .models import Meta
from .paths import Home, StoreError

__all__ = ["Store", "StoreError", "SchemaTooNew", "open_store"]

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 30_000


class SchemaTooNew(StoreError):
    pass


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Take transaction control away from the driver so BEGIN can be IMMEDIATE when asked.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


# Each migration upgrades from version N-1 to N; keep them additive so no data is lost.
MIGRATIONS: dict[int, list[str]] = {
    2: [
        # issue 11
        "ALTER TABLE run ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0",
    ],
}


class Store:
    """One database: sessions for reading and for writing, plus the home it lives in."""

    def __init__(self, home: Home | None = None, url: str | None = None):
        self.home = home or Home.resolve()
        self.url = url or os.environ.get("MTP_DB_URL") or self.home.db_url
        self.is_sqlite = self.url.startswith("sqlite")
        self.engine = _sqlite_engine(self.url) if self.is_sqlite else create_engine(self.url, pool_pre_ping=True)
        self._write_engine = self.engine.execution_options(sqlite_immediate=True) if self.is_sqlite else self.engine
        try:
            self._migrate()
        except DBAPIError as exc:
            self.engine.dispose()
            raise StoreError(self.explain(exc)) from None

    def explain(self, exc: DBAPIError) -> str:
        """What an unusable database means for the person who tried to open it."""
        why = str(getattr(exc, "orig", None) or exc)
        where = self.home.db_path if self.url == self.home.db_url else self.url
        low = why.lower()
        if "not a database" in low or "malformed" in low:
            return (f"{where} is not a readable mtp database ({why}); move it aside and run `mtp init` "
                    f"for a new one, or restore a backup")
        if "readonly" in low or "read-only" in low or "unable to open" in low:
            return (f"cannot open {where} for writing ({why}); the data folder {self.home.root} and the "
                    f"database must be writable by you (or choose another with --home / $MTP_HOME)")
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
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    # ------------------------------------------------------------------ schema
    def _migrate(self) -> None:
        existing = set(inspect(self.engine).get_table_names())
        with self.write() as s:
            if "meta" not in existing:
                SQLModel.metadata.create_all(s.connection())
                s.merge(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                return
            row = s.get(Meta, "schema_version")
            version = int(row.value) if row else 1
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{self.url} has schema version {version}, newer than this mtp ({SCHEMA_VERSION}); upgrade mtp"
                )
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS.get(v, []):
                    s.exec(text(stmt))
            # New tables (never columns) can simply be created.
            SQLModel.metadata.create_all(s.connection())
            s.merge(Meta(key="schema_version", value=str(SCHEMA_VERSION)))

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
        with self.write() as s:
            s.merge(Meta(key=key, value=value))

    def close(self) -> None:
        self.engine.dispose()


def open_store(home: str | os.PathLike | None = None) -> Store:
    """The data folder's store; raises StoreError with a message fit to show as is."""
    return Store(Home.resolve(home))
