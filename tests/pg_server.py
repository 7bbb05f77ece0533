"""A throwaway PostgreSQL server for the tests and benchmarks: initdb into a temp folder, start it
on a unix socket there (no TCP), hand out fresh databases, remove everything at the end.

PostgreSQL refuses to run as root, so under root (CI) the server runs as the `postgres` system
user (created if missing). `MTP_TEST_PG_URL` (e.g. postgresql+psycopg://me@localhost/postgres)
uses an existing server instead; each test still gets its own database there.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

ENV_URL = "MTP_TEST_PG_URL"
SUPERUSER = "mtp"


class NoServer(RuntimeError):
    """No PostgreSQL server binaries here (the message says how to get them)."""


def find_bin() -> Path:
    """The folder holding initdb and pg_ctl: $PATH first, then Debian's versioned folders."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for folder in sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True
    ):
        if os.access(os.path.join(folder, "initdb"), os.X_OK):
            return Path(folder)
    raise NoServer(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's `postgresql` "
        f"package, or set {ENV_URL} to a server where this user may create databases"
    )


def _free_port() -> int:
    # Only names the socket file (.s.PGSQL.<port>); picking a free TCP port avoids clashing with
    # a system server that may share the name on the same socket folder.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sbin(name: str) -> str:
    # root's tools live in sbin, which a minimal PATH may leave out.
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), name
    )


def _run_as() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(
            [
                _sbin("useradd"),
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "postgres",
            ],
            check=True,
            capture_output=True,
        )
    return [_sbin("runuser"), "-u", "postgres", "--"]


class PgServer:
    """One running server; `new_database()` returns the URL of a fresh, empty database."""

    def __init__(self) -> None:
        self.url = os.environ.get(ENV_URL) or None
        self.folder: Path | None = None
        self.port = 0
        self._admin = None

    def start(self) -> PgServer:
        if self.url:
            return self
        bindir = find_bin()
        # A short path: the unix socket path must stay under ~100 characters.
        self.folder = Path(tempfile.mkdtemp(prefix="mtp-pg-", dir="/tmp"))
        data = self.folder / "data"
        self.port = _free_port()
        run = dict(check=True, capture_output=True, text=True)
        try:
            prefix = _run_as()
            if prefix:
                shutil.chown(self.folder, "postgres")
            subprocess.run(
                prefix
                + [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
                **run,
            )
            opts = (
                f"-p {self.port} -k {self.folder} -c listen_addresses='' -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
            )
            subprocess.run(
                prefix
                + [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-o",
                    opts,
                    "-l",
                    str(self.folder / "server.log"),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
                **run,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            log = (
                (self.folder / "server.log").read_text()
                if (self.folder / "server.log").exists()
                else ""
            )
            shutil.rmtree(self.folder, ignore_errors=True)
            detail = getattr(exc, "stderr", None) or getattr(exc, "stdout", None) or exc
            raise NoServer(f"PostgreSQL did not start: {detail} {log[-2000:]}") from None
        self._bindir, self._prefix, self._opts = bindir, prefix, opts
        self.url = f"postgresql+psycopg://{SUPERUSER}@/postgres?host={self.folder}&port={self.port}"
        return self

    def _admin_engine(self):
        if self._admin is None:
            from sqlalchemy import create_engine

            self._admin = create_engine(
                self.url, isolation_level="AUTOCOMMIT", poolclass=_null_pool()
            )
        return self._admin

    def new_database(self) -> str:
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        name = "mtp_test_" + uuid.uuid4().hex[:12]
        with self._admin_engine().connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        return make_url(self.url).set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        name = make_url(url).database
        with self._admin_engine().connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def _pg_ctl(self, *args: str, check: bool = True) -> None:
        subprocess.run(
            self._prefix + [str(self._bindir / "pg_ctl"), "-D", str(self.folder / "data"), *args],
            capture_output=True,
            check=check,
        )

    def halt(self) -> None:
        """An outage: the server goes away (connections cut), its data stays for `resume`."""
        if self.folder is None:
            raise NoServer(f"an external server (${ENV_URL}) cannot be stopped by the tests")
        self._pg_ctl("-m", "immediate", "-w", "stop")

    def resume(self) -> None:
        self._pg_ctl(
            "-o", self._opts, "-l", str(self.folder / "server.log"), "-w", "-t", "60", "start"
        )

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.dispose()
        if self.folder is None:
            return
        subprocess.run(
            self._prefix
            + [
                str(self._bindir / "pg_ctl"),
                "-D",
                str(self.folder / "data"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            capture_output=True,
        )
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None


def _null_pool():
    from sqlalchemy.pool import NullPool

    return NullPool
