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
import time
from pathlib import Path

from store.db import Store

from .artifacts import probe_writable

# Errors of the disk itself. EACCES/EPERM are not here: an unreadable input image raises them
# too; the worker turns them into an EngineFault only where it writes its own artifacts.
SYSTEMIC_ERRNOS = frozenset(
    e
    for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EIO)
    if e is not None
)


class EngineFault(Exception):
    """The engine cannot go on writing results; ``reason`` is fit to show as is."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def systemic_reason(exc: BaseException) -> str | None:
    """Why ``exc`` is a fault of the machine (disk, database), or None when it is not."""
    from sqlalchemy.exc import DatabaseError, DataError, IntegrityError

    if isinstance(exc, EngineFault):
        return exc.reason
    # Integrity and data errors come from a run's own values (a NaN score, say): the run's fault.
    if isinstance(exc, DatabaseError) and not isinstance(exc, (IntegrityError, DataError)):
        # disk or database full, read-only database, unable to open, not a database, locked
        # past the busy timeout, server gone: nothing a run did.
        return f"database unusable: {getattr(exc, 'orig', None) or exc}"
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
        + (f" ({exc.filename})" if exc.filename else "")
    )


def sqlite_path(store: Store) -> str | None:
    if not store.is_sqlite:
        return None
    db = store.engine.url.database
    if db and db.startswith("file:"):  # a URI filename (?mode=...&uri=true)
        db = db[len("file:") :].split("?", 1)[0]
    return db if db and db != ":memory:" and "mode=memory" not in str(store.engine.url) else None


def check_database_file(store: Store) -> None:
    """A deleted SQLite file raises nothing (the open connection writes to the unlinked file,
    and every result would be lost), so look for it."""
    path = sqlite_path(store)
    if path and not os.path.exists(path):
        raise EngineFault(f"database file {path} is gone")


def probe(store: Store, home, ballast: Ballast | None = None) -> str | None:
    """None when the engine can write artifacts and the database again, else why not."""
    path = sqlite_path(store)
    if path and not os.path.exists(path):
        return f"database file {path} is gone"
    if ballast is not None and not ballast.room():
        return f"the disk of {home.root} is still (nearly) full"
    try:
        probe_writable(home)
    except OSError as exc:
        return f"cannot write artifacts in {home.artifacts}: {exc.strerror or exc}"
    try:
        # Connections opened before the fault may point at a file that is gone or was replaced.
        store.engine.dispose()
        store.set_meta("engine_probe", str(time.time()))
    except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
        return systemic_reason(exc) or f"database: {type(exc).__name__}: {exc}"
    return None


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


def is_space_fault(reason: str) -> bool:
    low = reason.lower()
    return "no space" in low or "disk is full" in low or "quota" in low
