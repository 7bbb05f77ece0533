"""Where mtp keeps its data: one folder ("home") holding the database and every artifact."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from .errors import StoreError  # re-exported: callers import it from here
from .settings import settings

ENV_HOME = "MTP_HOME"


def shared_group() -> bool:
    """MTP_SHARED_GROUP=1 shares the data folder with its group (folders 2770 setgid, files
    0660) instead of keeping it private (0700 / 0600), the default."""
    return settings().shared_group


def set_umask() -> None:
    """Make what this process creates private (or group-shared with MTP_SHARED_GROUP=1).

    The entry points (mtp, mtp-engine, mtp-tui) call it first, so the database, its WAL files,
    images and logs are never world-readable on a shared server whatever the login umask is.
    """
    os.umask(0o007 if shared_group() else 0o077)


def default_home() -> Path:
    env = settings().home
    if env:
        return env
    return Path(platformdirs.user_data_dir("mtp", appauthor=False))


def demo_home(home: str | os.PathLike | None = None) -> Path:
    """The demo's data folder: `home` when given explicitly, else `<default home>/demo`, so the
    demo never mixes with real work. `mtp demo`, `mtp --demo`, `mtp-tui --demo` and
    `mtp-engine --demo` all resolve it here."""
    return Path(home).expanduser() if home else default_home() / "demo"


@dataclass(frozen=True)
class Home:
    """Every path inside the data folder; build paths here, never by hand elsewhere."""

    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None, create: bool = True) -> Home:
        root = Path(home).expanduser() if home else default_home()
        h = cls(root.resolve())
        if create:
            h.ensure()
        return h

    def ensure(self) -> None:
        try:
            for p in (
                self.root,
                self.artifacts,
                self.concepts,
                self.models,
                self.logs,
                self.exports,
            ):
                p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the data folder {self.root} ({exc.strerror or exc}: {exc.filename}); "
                f"use a folder you can write with --home or ${ENV_HOME}"
            ) from None
        self._protect()

    def _protect(self) -> None:
        # The root's mode is what guards everything inside: files made before the umask was
        # set (or by a library in a notebook) stay unreadable to others behind it.
        shared = shared_group()
        for p in (self.root, self.artifacts, self.concepts, self.models, self.logs, self.exports):
            try:
                st = p.stat()
                if st.st_uid != os.getuid():
                    continue  # someone else's shared folder: theirs to set
                mode = 0o2770 if shared else 0o700
                if st.st_mode & 0o7777 != mode:
                    p.chmod(mode)
            except OSError:
                pass  # a read-only folder is already safe from us; the database open says more

    @property
    def id_path(self) -> Path:
        """The folder's identity, also recorded in its database (store.db: WrongHome)."""
        return self.root / ".mtp-id"

    def read_id(self) -> str | None:
        try:
            return self.id_path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def write_id(self, value: str) -> None:
        # Temp name then rename: a reader on another host never sees half an id.
        tmp = self.root / f".mtp-id.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            fh.write(value + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.id_path)

    @property
    def drafts_path(self) -> Path:
        """The app's unsaved forms (sweep builder, concept editor), kept across restarts."""
        return self.root / "drafts.json"

    @property
    def db_path(self) -> Path:
        return self.root / "mtp.db"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def concepts(self) -> Path:
        return self.root / "concepts"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def demo_model(self) -> Path:
        return self.models / "tiny-sd"

    @property
    def demo_sdxl_model(self) -> Path:
        return self.models / "tiny-sdxl"

    def run_dir(self, run_id: int) -> Path:
        return self.artifacts / f"run-{run_id}"

    def concept_dir(self, concept_id: int) -> Path:
        return self.concepts / str(concept_id)

    def resolve_artifact(self, rel: str | None) -> Path | None:
        """Artifact paths are stored relative to home so a data folder can be moved."""
        if not rel:
            return None
        p = Path(rel)
        return p if p.is_absolute() else self.root / p
