"""Which scoring backbone computed a score, exactly: ids, weight digests, hub revisions.

Torch-free; shared by the scorers (engine.scoring, engine.dreamsim_metric) and the engine-session
record (engine.provenance).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def _package_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def weights_digest(path: str | os.PathLike, length: int = 16) -> str:
    """sha256 of a weights file (first ``length`` hex digits), cached by path, size and mtime."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _WEIGHT_DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _WEIGHT_DIGESTS[key] = h.hexdigest()
    return _WEIGHT_DIGESTS[key][:length]


_WEIGHT_DIGESTS: dict[tuple[str, int, int], str] = {}


def hub_revision(repo_id: str, filename: str) -> str | None:
    """The commit of ``repo_id`` whose ``filename`` sits in the local hub cache, if any."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # an id that is not a hub id, or no huggingface_hub: no revision to name
        return None
    if isinstance(found, str) and "/snapshots/" in found:
        return found.split("/snapshots/", 1)[1].split("/", 1)[0]
    return None


def backbone_id(library: str, architecture: str, checkpoint: str) -> str:
    """The Score.backbone string: ``<library>:<architecture>:<checkpoint>@<package>-<version>``.

    Two score rows are comparable only when these strings are equal: the architecture names
    every choice that changes the numbers (``ViT-B-32-quickgelu``, not ``ViT-B-32``), the
    checkpoint is the open_clip pretrained tag (pinned to one file per open_clip version) or the
    hub id followed by ``#rev:<commit>`` of the snapshot loaded, or for local files their stem and
    ``#sha256:<16 hex>`` of the weights, and the library version closes it (a new open_clip may
    preprocess differently)."""
    package = {"open_clip": "open_clip_torch"}.get(library, library)
    return f"{library}:{architecture}:{checkpoint}@{package}-{_package_version(package)}"
