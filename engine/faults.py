"""Faults of the machine rather than of a run: a full disk, a read-only folder, an unusable database.

Such a fault is no run's fault, so the worker pauses instead of failing runs: it gives its
claimed runs back to the queue, reports "paused" and the reason in its Worker row, probes with
backoff and resumes when the fault clears. Everything else raised while runs are claimed is
the runs' own failure (engine.worker). Torch-free.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
import sqlite3
import stat
import time
from pathlib import Path

from store.db import Store, describe_db_error

from .artifacts import probe_writable
from .errors import EngineFault, EngineSick, FaultKind, kind_of_errno  # noqa: F401  (re-exported)

# Errors of the disk itself. EACCES/EPERM are not here: an unreadable input image raises them
# too; the worker turns them into an EngineFault only where it writes its own artifacts.
SYSTEMIC_ERRNOS = frozenset(
    e
    for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EIO)
    if e is not None
)


def shown_error(exc: BaseException) -> str:
    """An exception as a person reads it: database errors in words (their SQL and driver text
    go to the log only), anything else as type and message."""
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, EngineFault):
        return exc.reason
    if isinstance(exc, SQLAlchemyError):
        return describe_db_error(exc)
    return f"{type(exc).__name__}: {exc}"


_PATH_RE = re.compile(r"""(?:[A-Za-z]:)?(?:~|\.{1,2})?[\\/][^\s'",:;()\[\]]*""")
_NUMBER_RE = re.compile(r"0x[0-9a-fA-F]+|\d+(?:\.\d+)?")


def error_signature(exc: BaseException) -> str:
    """What makes two failures "the same error": the exception type and its message without
    paths and numbers (which name the run, not the cause)."""
    msg = _PATH_RE.sub("<path>", str(exc))
    msg = _NUMBER_RE.sub("#", msg)
    return f"{type(exc).__name__}: {' '.join(msg.split())[:200]}"


def systemic_fault(exc: BaseException) -> EngineFault | None:
    """``exc`` as a fault of the machine (disk, database) with its kind, or None when it is not."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, EngineFault):
        return exc
    reason = systemic_reason(exc)
    if reason is None:
        return None
    if isinstance(exc, OSError):
        return EngineFault(reason, kind_of_errno(exc.errno), exc.errno)
    if isinstance(exc, DBAPIError) and _database_full(exc.orig):
        return EngineFault(reason, FaultKind.SPACE)
    return EngineFault(reason, FaultKind.DATABASE)


# SQLite's SQLITE_FULL result code; PostgreSQL's SQLSTATE class 53 is "insufficient resources"
# (53100 disk_full, 53400 configuration limit).
_SQLITE_FULL = 13
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
_PG_DISK_FULL = "53100"


def _database_full(orig: BaseException | None) -> bool:
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == _SQLITE_FULL
    return getattr(orig, "sqlstate", None) == _PG_DISK_FULL


def systemic_reason(exc: BaseException) -> str | None:
    """Why ``exc`` is a fault of the machine (disk, database), or None when it is not."""
    from sqlalchemy.exc import (
        DataError,
        DBAPIError,
        DisconnectionError,
        IntegrityError,
        PendingRollbackError,
    )
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, EngineFault):
        return exc.reason
    if isinstance(exc, (DisconnectionError, PendingRollbackError, PoolTimeout)):
        return f"database unusable: {describe_db_error(exc)}"
    # Integrity and data errors come from a run's own values (a NaN score, say): the run's fault.
    # Any other driver error (InterfaceError "connection already closed" included) is the database's.
    if isinstance(exc, DBAPIError) and not isinstance(exc, (IntegrityError, DataError)):
        # disk or database full, read-only database, unable to open, not a database, locked
        # past the busy timeout, server gone: nothing a run did.
        # In words: the driver's text (SQL, constraint names) is for the log, not a person.
        return f"database unusable: {describe_db_error(exc)}"
    if isinstance(exc, OSError) and exc.errno in SYSTEMIC_ERRNOS:
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return None


def artifact_write_fault(exc: OSError, home) -> EngineFault | None:
    """An OSError with an errno while writing artifacts is the folder's fault (PIL's own
    encoder errors carry none and stay the run's)."""
    if exc.errno is None:
        return None
    return EngineFault(
        f"cannot write artifacts in {home.artifacts}: {exc.strerror or exc}"
        + (f" ({exc.filename})" if exc.filename else ""),
        kind_of_errno(exc.errno),
        exc.errno,
    )


def sqlite_path(store: Store) -> str | None:
    if not store.is_sqlite:
        return None
    db = store.engine.url.database
    if db and db.startswith("file:"):  # a URI filename (?mode=...&uri=true)
        db = db[len("file:") :].split("?", 1)[0]
    return db if db and db != ":memory:" and "mode=memory" not in str(store.engine.url) else None


class DatabaseFileWatch:
    """Whether the SQLite file this engine has open is still the one on disk and usable by others.

    An open connection notices none of this: a deleted or replaced mtp.db, a deleted -wal file
    or a chmod 000 leave it committing happily into files nobody else can read (or that no
    longer exist), so every result after that is lost or unseen. Checked by the heartbeat
    thread and before each commit. On Linux the files this process has open are compared
    (st_dev/st_ino) with those at the paths; elsewhere the main file's identity at first sight.
    """

    def __init__(self, store: Store):
        path = sqlite_path(store)
        self.path = os.path.realpath(path) if path else None
        self._known: tuple[int, int] | None = None
        self.wal_lost = False  # the -wal file under the open connections was deleted or replaced
        self.rescued_to: str | None = None  # where a deleted mtp.db's contents were saved

    def reset(self) -> None:
        """After a reconnect: the file now open is the one at the path."""
        self._known = None
        self.wal_lost = False
        self.rescued_to = None

    def rescue_deleted(self, store: Store) -> str | None:
        """mtp.db deleted while this process still has it open: write what the open connection
        sees (every commit, the -wal's included) to a new file next to it, for a person to move
        back. The path written, or None (not deleted but moved away, or the copy failed)."""
        if not self.path or os.path.exists(self.path) or self.rescued_to:
            return self.rescued_to
        opened = self._open_ids() or {}
        if self.path not in opened:
            return None  # moved (our descriptor shows its new name): moving it back is enough
        target = f"{self.path}.rescued-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            raw = store.engine.raw_connection()  # a pooled one: it has the deleted file open
            try:
                if os.path.exists(self.path):
                    return None  # a new connection made a new, empty file there: nothing to save
                # Outside any transaction (VACUUM refuses one); the driver is in autocommit.
                raw.driver_connection.execute("VACUUM INTO ?", (target,))  # type: ignore[union-attr]
            finally:
                raw.close()
        except Exception as exc:  # noqa: BLE001 - reported; the pause goes on
            logging.getLogger("mtp.engine").error(
                "could not save the deleted %s: %r", self.path, exc
            )
            return None
        self.rescued_to = target
        logging.getLogger("mtp.engine").warning(
            "%s was deleted while open; its contents were saved to %s", self.path, target
        )
        return target

    def rescue_wal(self, store: Store) -> str | None:
        """Save what only the engine still sees after its -wal file was deleted: the open
        connections still read the old (unlinked) log, so a checkpoint copies every commit in it
        into mtp.db, which is still the file on disk; then reconnect, on a fresh -wal. None when
        done, else why not."""
        if not self.wal_lost:
            return None
        try:
            with store.engine.connect() as conn:
                row = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").first()
                busy = row[0] if row is not None else 0
        except Exception as exc:  # noqa: BLE001 - reported, the pause goes on
            logging.getLogger("mtp.engine").error("saving the deleted -wal failed: %r", exc)
            return f"database unusable: {shown_error(exc)}"
        if busy:
            return f"database file {self.path}: another process holds it, the engine's commits wait to be saved"
        store.engine.dispose()
        self.reset()
        logging.getLogger("mtp.engine").warning(
            "the deleted %s-wal was checkpointed into %s: no commit is lost", self.path, self.path
        )
        return None

    def _open_ids(self) -> dict[str, set[tuple[int, int]]] | None:
        """(dev, ino) of this process's open files at the database's paths, deleted ones included."""
        try:
            fds = os.listdir("/proc/self/fd")
        except OSError:
            return None
        names = {str(self.path), f"{self.path}-wal"}
        out: dict[str, set[tuple[int, int]]] = {}
        for fd in fds:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.endswith(" (deleted)"):
                    target = target[: -len(" (deleted)")]
                if target not in names:
                    continue
                st = os.fstat(int(fd))
            except (OSError, ValueError):
                continue
            out.setdefault(target, set()).add((st.st_dev, st.st_ino))
        return out

    def problem(self) -> str | None:
        path = self.path
        if not path:
            return None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if self.rescued_to:
                return (
                    f"database file {path} was deleted; everything the engine had committed is "
                    f"saved in {self.rescued_to}: move that file to {path} to resume"
                )
            return f"database file {path} is gone"
        except OSError as exc:
            return f"database file {path} cannot be examined: {exc.strerror or exc}"
        ident = (st.st_dev, st.st_ino)
        lost = self._lost_file()
        if lost:
            return lost
        if self._known is None:
            self._known = ident
        elif self._known != ident:
            return f"database file {path} was replaced by another file while the engine had it open"
        if not _usable(path, st):
            if not os.path.exists(path):
                # deleted between the stat and the access check: say what happened
                return self.problem()
            return (
                f"database file {path} is no longer readable and writable (mode "
                f"{stat.S_IMODE(st.st_mode):03o}): other processes cannot open it; restore its "
                f"permissions"
            )
        unreadable = _fresh_read(path)
        # The -wal may have gone between the look above and that read: name the cause.
        return (self._lost_file() or unreadable) if unreadable else None

    def _lost_file(self) -> str | None:
        """Why, when a file this process has open at the database's paths is gone or replaced."""
        opened = self._open_ids()
        for name, ids in (opened or {}).items():
            try:
                now = os.stat(name)
                current = (now.st_dev, now.st_ino)
            except OSError:
                current = None
            if current not in ids:
                what = "deleted" if current is None else "replaced by another file"
                if name.endswith("-wal"):
                    self.wal_lost = True
                return (
                    f"database file {name} was {what} while the engine had it open; other "
                    f"processes cannot see what it writes now"
                )
        return None


def _usable(path: str, st: os.stat_result) -> bool:
    if not os.access(path, os.R_OK | os.W_OK):
        return False
    # root passes every access check; others (the app, `mtp`) may not be root.
    return os.geteuid() != 0 or st.st_mode & (stat.S_IRUSR | stat.S_IWUSR) == (
        stat.S_IRUSR | stat.S_IWUSR
    )


def _fresh_read(path: str) -> str | None:
    """Read through a new, short-lived connection, as another process would (a deleted -wal
    makes that fail with "disk I/O error" while the engine's own connection still works)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=2.0)
    except sqlite3.Error as exc:
        return f"database file {path} cannot be opened by other processes: {describe_db_error(exc)}"
    try:
        conn.execute("SELECT count(*) FROM meta").fetchone()
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return None  # someone is writing: usable, only not this instant
        return f"database file {path} cannot be read by other processes: {describe_db_error(exc)}"
    finally:
        conn.close()
    return None


def check_database_file(store: Store, watch: DatabaseFileWatch | None = None) -> None:
    """Raise EngineFault when the SQLite file is no longer the one on disk or unusable
    (DatabaseFileWatch): the open connection raises nothing and every result would be lost."""
    problem = (watch or DatabaseFileWatch(store)).problem()
    if problem:
        raise EngineFault(problem, FaultKind.DATABASE_FILE)


def probe(
    store: Store,
    home,
    ballast: Ballast | None = None,
    watch: DatabaseFileWatch | None = None,
    who: str = "",
) -> str | None:
    """None when the engine can write artifacts and the database again, else why not."""
    watch = watch or DatabaseFileWatch(store)
    path = sqlite_path(store)
    if path and not os.path.exists(path):
        return watch.problem() or f"database file {path} is gone"
    if ballast is not None and not ballast.room():
        return f"the disk of {home.root} is still (nearly) full"
    try:
        probe_writable(home)
    except OSError as exc:
        return f"cannot write artifacts in {home.artifacts}: {exc.strerror or exc}"
    try:
        # Connections opened before the fault may point at a file that is gone or was replaced.
        problem = watch.rescue_wal(store)
        if problem:
            return problem
        store.engine.dispose()
        watch.reset()
        # An upsert (Store.set_meta): engines probing at the same moment never collide.
        store.set_meta("engine_probe", f"{who or os.getpid()} {time.time():.3f}")
    except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
        logging.getLogger("mtp.engine").debug("probe: database write failed: %r", exc)
        return systemic_reason(exc) or f"database unusable: {shown_error(exc)}"
    return watch.problem()


class LogLimiter:
    """Log a repeated message once per ``every_s``, so a lasting fault cannot fill the disk with logs."""

    def __init__(self, logger: logging.Logger, every_s: float = 300.0):
        self.log, self.every_s = logger, every_s
        self._last: dict[str, float] = {}

    def __call__(self, level: int, msg: str, *args) -> None:
        key = msg % args if args else msg
        now = time.monotonic()
        if now - self._last.get(key, -1e18) >= self.every_s:
            self._last[key] = now
            if len(self._last) > 100:
                self._last = {key: now}
            self.log.log(level, msg, *args)


class Ballast:
    """Space reserved on the data folder's disk, given up when the disk is full.

    A full disk refuses the very writes that would tell anyone the engine is stuck (its Worker
    row) and give its runs back; freeing this file lets those few writes through. The engine
    resumes only once the disk has room for the ballast again, and refills it then. Files left
    by killed engines are removed by the next engine on the host.
    """

    PREFIX = ".ballast-"

    def __init__(self, folder: Path, size: int = 1 << 20, host: str | None = None):
        self.folder, self.size = Path(folder), int(size)
        self.host = re.sub(r"[^A-Za-z0-9_.-]+", "", host or socket.gethostname()) or "host"
        self.path = self.folder / f"{self.PREFIX}{self.host}-{os.getpid()}"

    def fill(self) -> bool:
        if self.size <= 0 or self.path.exists():
            return True
        try:
            with open(self.path, "wb") as fh:
                # Real blocks (not a sparse truncate), or freeing it would free nothing.
                chunk = b"\0" * min(self.size, 1 << 16)
                for _ in range(0, self.size, len(chunk)):
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            return True
        except OSError:
            self.path.unlink(missing_ok=True)
            return False

    def free(self) -> bool:
        try:
            self.path.unlink()
            return True
        except OSError:
            return False

    def room(self) -> bool:
        """Whether the disk has room for the ballast and then some."""
        try:
            return shutil.disk_usage(self.folder).free >= 2 * self.size + (1 << 16)
        except OSError:
            return False

    def sweep(self) -> None:
        """Remove the ballast of engines on this host that are gone."""
        from store.queue import pid_alive

        for p in self.folder.glob(f"{self.PREFIX}{self.host}-*"):
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                p.unlink(missing_ok=True)
