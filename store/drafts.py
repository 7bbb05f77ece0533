"""The app's unsaved forms, kept in the data folder so quitting (or a dropped SSH session) loses
nothing typed. Plain JSON: {"sweep": {...} | null, "concept": {...} | null}."""

from __future__ import annotations

import json
import os
from pathlib import Path

KINDS = ("sweep", "concept")


def load_drafts(path: Path) -> dict:
    """The kept drafts; a missing or unreadable file is no drafts (they are a convenience, and
    a broken file must never keep the app from starting)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: data[k] for k in KINDS if isinstance(data.get(k), dict)}


def save_drafts(path: Path, drafts: dict) -> None:
    """Write all drafts at once (temp file then rename: a crash mid-write keeps the old file).
    Nothing kept: the file is removed. Raises OSError when the folder is not writable."""
    path = Path(path)
    kept = {k: drafts.get(k) for k in KINDS if drafts.get(k) is not None}
    if not kept:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(kept, default=str, sort_keys=True))
    os.replace(tmp, path)
