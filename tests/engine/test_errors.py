"""One exception root, and machine faults told apart by their codes, never by their text."""

from __future__ import annotations

import errno
import importlib
import inspect
import pkgutil
import sqlite3

import pytest

import engine
import store
import tui
from engine.errors import EngineFault, FaultKind
from engine.faults import systemic_fault
from store.errors import MtpError


def _modules():
    for pkg in (store, engine, tui):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.startswith("tui.") and info.name.endswith("artifact_image"):
                continue  # asks the terminal for its graphics support at import
            yield importlib.import_module(info.name)


@pytest.mark.model  # imports every engine module, torch and diffusers with them
def test_every_exception_mtp_defines_is_under_one_root():
    mine = {
        f"{cls.__module__}.{cls.__qualname__}": cls
        for module in _modules()
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BaseException)
        and cls.__module__.split(".")[0] in ("store", "engine", "tui")
    }
    assert len(mine) >= 15, sorted(mine)
    outside = sorted(name for name, cls in mine.items() if not issubclass(cls, MtpError))
    assert outside == []


def test_disk_faults_are_told_apart_by_errno_not_by_words():
    full = systemic_fault(OSError(errno.ENOSPC, "a message in any language", "/x"))
    assert full.kind == FaultKind.SPACE and full.errno == errno.ENOSPC
    assert systemic_fault(OSError(errno.EROFS, "whatever")).kind == FaultKind.READ_ONLY
    assert systemic_fault(OSError(errno.EIO, "no space left (not really)")).kind == FaultKind.IO
    assert systemic_fault(ValueError("no space left on device")) is None  # words alone mean nothing
    fault = EngineFault("anything", FaultKind.DATABASE)
    assert systemic_fault(fault) is fault


def test_a_full_sqlite_database_is_a_space_fault_by_its_result_code(tmp_path):
    from sqlalchemy.exc import OperationalError

    err = sqlite3.OperationalError("database or disk is full")
    err.sqlite_errorcode = 13  # SQLITE_FULL
    assert systemic_fault(OperationalError("INSERT", {}, err)).kind == FaultKind.SPACE
    other = sqlite3.OperationalError("database or disk is full")  # same words, another code
    other.sqlite_errorcode = 10  # SQLITE_IOERR
    assert systemic_fault(OperationalError("INSERT", {}, other)).kind == FaultKind.DATABASE
