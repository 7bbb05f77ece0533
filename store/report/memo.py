"""Reports kept between screen visits while the database has not changed.

Aggregating a 100k-run experiment and planning its image grid read every run (~1 s of CPU);
the results screen asks for the same tables and grid each time it opens, on every axis it
cycles through, and on live refreshes that found nothing new. A result is reused only while
the store's change token (bumped in the same transaction as any write to runs, scores,
experiments or concepts) is the one it was computed under, so a reused table or grid is
exactly what a fresh computation would return. A grid is also redrawn when any image file it
drew changed on disk, since files can change without a database write.
"""

from __future__ import annotations

import copy
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from store.db import Store

_caches: weakref.WeakKeyDictionary[Store, ReportCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


class ReportCache:
    """A small LRU of results computed from one store, each tagged with the change token it saw."""

    def __init__(self, store: Store, size: int, kept: dict[str, int] | None = None):
        self._store = weakref.ref(store)
        self._size = size
        self._kept = kept or {}  # per kind (a key's first item): how many to keep at most
        self._entries: OrderedDict[Hashable, tuple[str, Any, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0  # for tests and benchmarks

    def get(
        self,
        key: Hashable,
        compute: Callable[[], Any] | None,
        stamp: Callable[[Any], Any] | None = None,
    ) -> Any:
        """``compute()``, or its earlier result when the store has not changed since. ``stamp``:
        a fingerprint of what the result depends on outside the database (file times). With
        ``compute=None``, only a kept result is returned (else None): nothing is computed."""
        store = self._store()
        token = store.change_token()
        with self._lock:
            entry = self._entries.get(key)
        if (
            entry is not None
            and entry[0] == token
            and (stamp is None or stamp(entry[1]) == entry[2])
        ):
            with self._lock:
                self._entries.move_to_end(key)
                self.hits += 1
            return entry[1]
        if compute is None:
            return None
        with self._lock:
            self.misses += 1
        value = compute()
        # Kept under the token read before computing: a write landing meanwhile moved the token
        # for good, so a value that may have half-seen it is never handed out again.
        with self._lock:
            self._entries[key] = (token, value, stamp(value) if stamp else None)
            self._entries.move_to_end(key)
            self._evict(key[0] if isinstance(key, tuple) else None)
        return value

    def _evict(self, kind) -> None:
        same = [k for k in self._entries if isinstance(k, tuple) and k[0] == kind]
        for old in same[: max(0, len(same) - self._kept.get(kind, len(same)))]:
            del self._entries[old]
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# A drawn grid can be a 4096 px square (50 MB in memory): only the last few are kept.
GRIDS_KEPT = 4


def cache_for(store: Store) -> ReportCache:
    with _caches_lock:
        cache = _caches.get(store)
        if cache is None:
            cache = _caches[store] = ReportCache(store, size=32, kept={"grid": GRIDS_KEPT})
        return cache


def cached_aggregate(
    store: Store,
    experiment_id: int,
    by: str,
    scale: str = "raw",
    backbone: str | None = None,
    cells: str = "common",
    versus: Any = None,
):
    """``aggregate(...)``, reused while nothing changed. Each caller gets its own copy of the rows
    (a few dozen objects), so marking or sorting them never alters the kept table."""
    from .aggregate import aggregate

    rows = cache_for(store).get(
        ("aggregate", experiment_id, by, scale, backbone, cells, versus),
        lambda: aggregate(
            store, experiment_id, by, scale=scale, backbone=backbone, cells=cells, versus=versus
        ),
    )
    return copy.deepcopy(rows)


def _freeze(value: Any) -> Hashable:
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _file_stamp(layout) -> tuple:
    out = []
    for path in getattr(layout, "files", ()):
        try:
            st = os.stat(path)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def cached_render_grid(
    store: Store, experiment_id: int, by: str, only_cached: bool = False, **options
):
    """``render_grid(...)`` (plan and drawing), reused while nothing changed in the database nor
    in the image files it drew. The layout is shared: callers must not draw on its image.
    ``only_cached``: the kept layout or None, without planning or drawing anything."""
    from .grid_image import render_grid

    compute = None if only_cached else (lambda: render_grid(store, experiment_id, by, **options))
    return cache_for(store).get(
        ("grid", experiment_id, by, _freeze(options)), compute, stamp=_file_stamp
    )


def cached_leaderboard(
    store: Store, study_id: int, reference: str | None = None, sort: str | None = None
):
    """``build_leaderboard(...)`` (sorted by ``sort``), reused while nothing changed; each caller
    gets its own copy."""
    from .leaderboard import build_leaderboard, sort_rows

    def compute():
        board = build_leaderboard(store, study_id, reference=reference)
        sort_rows(board, sort)
        return board

    board = cache_for(store).get(("leaderboard", study_id, reference, sort), compute)
    return copy.deepcopy(board)
