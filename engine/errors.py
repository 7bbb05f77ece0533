"""The engine's exceptions under mtp's one root (store.errors.MtpError). Torch-free.

`EngineError` is the engine layer's class; everything the engine raises on purpose derives from
it. Classes that replaced a builtin base keep it as a second base, so `except ValueError` and
`except RuntimeError` written before the root still catch them.
"""

from __future__ import annotations

import errno as _errno
from enum import StrEnum

from store.errors import MtpError


class EngineError(MtpError):
    """Something the engine cannot do; the message is fit to show as is."""


class FaultKind(StrEnum):
    """What kind of machine fault paused an engine: decided from error codes, never from text."""

    SPACE = "space"  # ENOSPC/EDQUOT, SQLITE_FULL, PostgreSQL disk_full
    READ_ONLY = "read-only"  # EROFS
    PERMISSION = "permission"  # EACCES/EPERM writing the engine's own artifacts
    IO = "io"  # EIO and other errno-carrying write failures
    DATABASE = "database"  # the database server or file refused or is unreachable
    DATABASE_FILE = "database-file"  # the SQLite file open is no longer the one on disk
    SICK = "sick"  # the brake: every run failing alike


_ERRNO_KINDS = {
    _errno.ENOSPC: FaultKind.SPACE,
    getattr(_errno, "EDQUOT", -1): FaultKind.SPACE,
    _errno.EROFS: FaultKind.READ_ONLY,
    _errno.EACCES: FaultKind.PERMISSION,
    _errno.EPERM: FaultKind.PERMISSION,
}


def kind_of_errno(code: int | None) -> FaultKind:
    return _ERRNO_KINDS.get(code, FaultKind.IO) if code is not None else FaultKind.IO


class EngineFault(EngineError):
    """The engine cannot go on writing results. ``reason`` is fit to show as is; ``kind`` (and
    ``errno`` when an OS error caused it) say what to do about it: a full disk frees the
    ballast, a database fault is probed every few seconds."""

    def __init__(self, reason: str, kind: FaultKind = FaultKind.IO, errno: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.kind = FaultKind(kind)
        self.errno = errno


class EngineSick(EngineFault):
    """Run after run of different experiments or models failed alike: the engine, not the runs,
    is broken (the brake in engine.worker). ``run_ids`` are the runs it failed in that streak,
    given back to the queue uncharged. Cleared by `mtp queue resume` or a restart, not by a probe:
    nothing here can test whether the cause went away."""

    def __init__(self, reason: str, run_ids: list[int]):
        super().__init__(reason, FaultKind.SICK)
        self.run_ids = list(run_ids)


class ScorerUnavailable(EngineError, RuntimeError):
    """A scoring backbone could not be loaded (usually: weights not available offline)."""
