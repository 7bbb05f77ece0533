"""Writing a run's pixels into its artifact folder (torch-free: PIL and numpy only).

Every file is written under a temporary name and moved into place with ``os.replace``, so a
reader (the TUI) or a crash never sees half a PNG. Paths returned are relative to home, which
is what the Run row stores so a data folder can be moved.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from store.paths import Home
from store.settings import settings

# ------------------------------------------------------------------ fault injection (tests only)
# The fault-injection hook: called with ("write", path) before every artifact file is written
# and with ("written", run folder) once a run's files are all in place, before the engine
# commits the run. Tests set it in process; for engine subprocesses the variable FAULT_ENV sets it:
#   MTP_FAULT=enospc:FLAG            every write raises ENOSPC while the file FLAG exists
#   MTP_FAULT=erofs:FLAG, eacces:FLAG  the same with a read-only file system / permission denied
#   MTP_FAULT=kill-after-write:P     SIGKILL self with probability P between write and commit
#   MTP_FAULT=oserror:FLAG           every generation raises OSError(EMFILE) while FLAG exists
#                                    (an engine whose environment fails every run alike)
# Never set in production; unset, it costs one attribute check per file.
FAULT_ENV = "MTP_FAULT"


def _env_fault_hook() -> Callable[[str, Path], None] | None:
    spec = settings().fault
    kind, _, arg = spec.partition(":")
    if kind in ("enospc", "erofs", "eacces") and arg:
        code = getattr(errno, kind.upper())

        def hook(stage: str, path: Path) -> None:
            if stage == "write" and os.path.exists(arg):
                raise OSError(code, os.strerror(code), str(path))

        return hook
    if kind == "oserror" and arg:

        def hook(stage: str, path: Path) -> None:
            if stage == "generate" and os.path.exists(arg):
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

        return hook
    if kind == "kill-after-write":
        p = float(arg or 1.0)

        def hook(stage: str, path: Path) -> None:
            if stage == "written" and random.random() < p:
                os.kill(os.getpid(), signal.SIGKILL)

        return hook
    return None


fault_hook: Callable[[str, Path], None] | None = _env_fault_hook()


def _fault(stage: str, path: Path) -> None:
    if fault_hook is not None:
        fault_hook(stage, path)


fault = _fault  # stages: "write", "written" (here) and "generate" (engine.worker)


def probe_writable(home: Home) -> None:
    """Raise the OSError that writing an artifact would meet now (full disk, read-only folder)."""
    home.artifacts.mkdir(parents=True, exist_ok=True)
    # Per thread too: probes of in-process workers must not remove each other's file.
    path = home.artifacts / f".probe-{os.getpid()}-{threading.get_ident()}"

    # Some blocks, not one byte: a nearly full disk often still takes a tiny file.
    def fill(fh) -> None:
        fh.write(b"\0" * 65536)
        fh.flush()
        os.fsync(fh.fileno())

    _atomic_write(path, fill)
    path.unlink(missing_ok=True)


def _atomic_write(path: Path, write) -> None:
    _fault("write", path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink(missing_ok=True)


def save_png(image: Any, path: Path) -> None:
    _atomic_write(path, lambda fh: image.save(fh, format="PNG"))


def save_mask(mask: np.ndarray, path: Path) -> None:
    from PIL import Image

    arr = np.clip(np.nan_to_num(np.asarray(mask, dtype=np.float32)), 0.0, 1.0)
    save_png(Image.fromarray((arr * 255).round().astype(np.uint8), mode="L"), path)


def save_maps(maps: Mapping[str, np.ndarray], path: Path) -> None:
    arrays = {str(k): np.asarray(v, dtype=np.float32) for k, v in maps.items()}
    # A file object keeps np.savez from appending ".npz" to the temporary name.
    _atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))  # type: ignore[arg-type]


def write_run_artifacts(
    home: Home,
    run_id: int,
    image: Any,
    source_image: Any,
    mask: Mapping[str, np.ndarray] | None = None,
    maps: Mapping[str, np.ndarray] | None = None,
) -> dict[str, str | None]:
    """Write target.png, source.png and, when present, masks and maps; return Run path columns."""
    folder = home.run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)

    def rel(p: Path) -> str:
        return str(p.relative_to(home.root))

    out: dict[str, str | None] = {
        "image_path": None,
        "source_image_path": None,
        "mask_path": None,
        "source_mask_path": None,
        "maps_path": None,
    }
    save_png(image, folder / "target.png")
    out["image_path"] = rel(folder / "target.png")
    if source_image is not None:
        save_png(source_image, folder / "source.png")
        out["source_image_path"] = rel(folder / "source.png")
    if mask:
        if mask.get("target") is not None:
            save_mask(mask["target"], folder / "mask_target.png")
            out["mask_path"] = rel(folder / "mask_target.png")
        if mask.get("source") is not None:
            save_mask(mask["source"], folder / "mask_source.png")
            out["source_mask_path"] = rel(folder / "mask_source.png")
    if maps:
        save_maps(maps, folder / "maps.npz")
        out["maps_path"] = rel(folder / "maps.npz")
    _fault("written", folder)
    return out


def read_set_images(home, members) -> list | None:
    """The images of a whole set of done runs, read as scoring reads them (bounded); None when
    any member is not done, has no image or its file is not a readable image: a partial set is
    another set, so it is not scored."""
    from store.images import image_problem, open_bounded

    if len(members) < 2 or any(m.status != "done" or not m.image_path for m in members):
        return None
    paths = [home.resolve_artifact(m.image_path) for m in members]
    if any(image_problem(p, shape=False) for p in paths):
        return None
    return [open_bounded(p) for p in paths]
