"""Exports of an experiment: runs CSV, summary CSV, trade-off plot PNG, image grid PNG.

The runs CSV streams one SQL query (scores pivoted into one column per metric/backbone)
straight into the csv writer: 100k runs take seconds, where ORM objects took minutes.
Dates are ISO 8601 UTC, there is no index column, and every file is written next to its
final name and renamed, so a crash never leaves half a CSV behind.
"""

from __future__ import annotations

import csv
import io
import math
import os
import queue
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Integer,
    String,
    and_,
    case,
    cast,
    func,
    literal,
    literal_column,
    or_,
    select,
    type_coerce,
)

from store.db import Store
from store.models import EngineSession, Experiment, Run, Score
from store.safe_text import is_safe, safe_text

from .aggregate import (
    SCALES,
    Aggregate,
    AggregateRow,
    aggregate,
    check_by,
    direction_text,
    image_metric,
    iter_rows,
    metric_def,
    scaled_sql,
)

_UNSAFE = re.compile(r"[^\w.\- ]+")


# ------------------------------------------------------------------ paths
def safe_filename(name: str, suffix: str) -> str:
    """A file name with no separators or control characters, not hidden, ending in ``suffix``."""
    from store.queries import InputError

    cleaned = _UNSAFE.sub("_", name).strip(" .")
    if not cleaned or cleaned.strip("_") == "":
        raise InputError(f"export: {name!r} is not a usable file name")
    if not cleaned.lower().endswith(suffix):
        cleaned += suffix
    return cleaned


def resolve_output(
    path: str | os.PathLike, suffix: str, folder: str | os.PathLike | None = None
) -> Path:
    """Where an export goes: ``path`` must resolve inside ``folder`` (``..`` or an absolute path
    elsewhere is refused). ``folder=None`` means the path itself is the user's explicit choice.
    The file name is sanitised either way."""
    from store.queries import InputError

    raw = Path(os.fspath(path)).expanduser()
    name = safe_filename(raw.name, suffix)
    if folder is None:
        if not raw.is_absolute():
            raise InputError(f"export: {path} is relative and no export folder was given")
        target = raw.parent.resolve() / name
    else:
        base = Path(folder).expanduser().resolve()
        # resolve() follows symlinks too, so a link inside the folder cannot lead outside it.
        target = (base / raw.parent).resolve() / name
        if base != target.parent and base not in target.parent.parents:
            raise InputError(f"export: {path} would be written outside {base}")
    if not target.parent.is_dir():
        raise InputError(f"export: folder {target.parent} does not exist")
    return target


def default_name(
    store: Store,
    experiment_id: int,
    kind: str,
    suffix: str,
    by: str | None = None,
    folder: str | os.PathLike | None = None,
) -> str:
    """`<experiment>-<kind>[-<axis>]<suffix>` with spaces as `_` (names a shell can take
    unquoted); when that file exists in ``folder`` (default: the data folder's exports), the
    first free `-2`, `-3`, ... so a second export never overwrites the first silently."""
    with store.session() as s:
        exp = s.get(Experiment, experiment_id)
    stem = f"{exp.name if exp else experiment_id}-{kind}" + (f"-{by}" if by else "")
    return free_name(store, stem, suffix, folder)


def free_name(store: Store, stem: str, suffix: str, folder: str | os.PathLike | None = None) -> str:
    """``stem`` + ``suffix`` as a safe file name, or the first free `-2`, `-3`, ... in ``folder``
    (default: the data folder's exports)."""
    name = safe_filename("_".join(stem.split()), suffix)
    where = Path(store.home.exports if folder is None else folder).expanduser()
    base, n = name[: -len(suffix)] if name.endswith(suffix) else name, 2
    while (where / name).exists():
        name = f"{base}-{n}{suffix}"
        n += 1
    return name


@contextmanager
def _atomic(target: Path, mode: str = "w") -> Iterator:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(
            fd,
            mode,
            newline="" if "b" not in mode else None,
            **({"encoding": "utf-8"} if "b" not in mode else {}),
        ) as fh:
            yield fh
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _target(store: Store, path, suffix: str, folder) -> Path:
    return resolve_output(path, suffix, store.home.exports if folder is None else folder)


def _require_experiment(store: Store, experiment_id: int) -> Experiment:
    from store.queries import InputError

    with store.session() as s:
        exp = s.get(Experiment, experiment_id)
    if exp is None:
        raise InputError(f"experiment {experiment_id} does not exist")
    return exp


# ------------------------------------------------------------------ runs CSV
def score_columns(store: Store, experiment_id: int) -> list[tuple[str, str]]:
    """(metric, backbone) pairs scored in an experiment, in a stable order."""
    q = (
        select(Score.metric, Score.backbone)
        .distinct()
        .join(Run, Run.id == Score.run_id)
        .where(Run.experiment_id == experiment_id)
    )
    with store.session() as s:
        pairs = [tuple(r) for r in s.execute(q)]
    from .aggregate import METRIC_ORDER

    return sorted(
        pairs, key=lambda p: (METRIC_ORDER.index(p[0]) if p[0] in METRIC_ORDER else 99, p[0], p[1])
    )


def score_header(metric: str, backbone: str) -> str:
    return f"{metric}@{backbone}"


def _python_type(column):
    # sqlmodel wraps DateTime in a TypeDecorator whose python_type is ``object``; look at its impl.
    t = getattr(column.type, "impl", column.type)
    try:
        return t.python_type
    except NotImplementedError:
        return None


def _neutralised_sql(column, name: str):
    """`_csv_text` in SQL, so the fast SQLite path (raw DBAPI rows) is covered too."""
    # Inline literals: one substr per cell, and no expanding IN, which the raw compile of
    # iter_rows cannot render. The characters are fixed, so nothing is interpolated from data.
    starts: list[Any] = [literal_column("'" + c + "'") for c in _FORMULA_START]
    return case((func.substr(column, 1, 1).in_(starts), literal("'") + column), else_=column).label(
        name
    )


def _run_column(store: Store, column):
    kind = _python_type(column)
    if kind is str:
        return _neutralised_sql(column, column.name)
    if kind is bool:
        # 0/1 on every backend, and no per-value conversion on the way out (SQLite already
        # stores 0/1; PostgreSQL has a real boolean that must be cast).
        return (type_coerce(column, Integer) if store.is_sqlite else cast(column, Integer)).label(
            column.name
        )
    if kind is datetime and store.is_sqlite:
        # SQLite keeps naive UTC text "YYYY-MM-DD HH:MM:SS.ffffff"; make it ISO 8601 in SQL
        # instead of parsing 400k datetimes in Python.
        return (func.replace(cast(column, String), " ", "T") + "Z").label(column.name)
    return column


def _threshold_column(store: Store, table):
    """mask_threshold with Otsu's (NULL on a masked run) written as ``otsu``, so it is never the
    empty cell of an unmasked run."""
    from store.models import OTSU

    value = table.c.mask_threshold if store.is_sqlite else cast(table.c.mask_threshold, String)
    return case(
        (and_(table.c.mask_threshold.is_(None), table.c.mask_mode != "off"), literal(OTSU)),
        else_=value,
    ).label("mask_threshold")


# Per metric/backbone column names (``<name>:<metric>@<backbone>``) of the scoring session.
_SCORER_NAMES = {
    "role": "score_session_role",
    "scorer_device": "score_device",
    "scorer_dtype": "score_dtype",
    "torch_version": "score_torch",
    "open_clip_version": "score_open_clip",
    "transformers_version": "score_transformers",
    "mtp_version": "score_mtp",
    "scorers_json": "score_weights",
}


def runs_query(store: Store, experiment_id: int, scale: str = "raw"):
    """The runs of an experiment with one column per (metric, backbone); returns (query, header)."""
    from store.queries import InputError

    if scale not in SCALES:
        raise InputError(f"--scale: {scale!r} is not one of {', '.join(SCALES)}")
    table = Run.__table__
    pairs = score_columns(store, experiment_id)
    # Scores are pivoted once in a grouped subquery and joined: one pass over the score index,
    # measured 3x faster than a correlated lookup per run and metric.
    ids = select(table.c.id).where(table.c.experiment_id == experiment_id)
    pivot_cols = [
        func.avg(case((and_(Score.metric == m, Score.backbone == b), Score.value))).label(f"s{i}")
        for i, (m, b) in enumerate(pairs)
    ]
    text = func.max(case((Score.metric == "clip_t", Score.scored_text))).label("scored_text")
    # Who computed each value: its engine session and its preprocessing, per metric/backbone.
    who_cols = []
    for i, (m, b) in enumerate(pairs):
        this = and_(Score.metric == m, Score.backbone == b)
        who_cols += [
            func.max(case((this, Score.session_id))).label(f"w{i}"),
            func.max(case((this, Score.preprocess))).label(f"p{i}"),
        ]
    pivot = (
        select(Score.run_id, *pivot_cols, text, *who_cols)
        .where(Score.run_id.in_(ids))
        .group_by(Score.run_id)
        .subquery("p")
    )
    cols = [
        _threshold_column(store, table) if c.name == "mask_threshold" else _run_column(store, c)
        for c in table.columns
    ]
    # final_step is exclusive; this says which step is really the last one controlled (empty
    # for a baseline or an empty window), as run detail and `mtp runs` show "steps 2-3".
    start, final, skip = table.c.start_step, table.c.final_step, table.c.skip_interval
    end = case((final > table.c.num_steps, table.c.num_steps), else_=final)
    last_step = case(
        (or_(table.c.is_baseline, end <= start), None),
        else_=start + skip * ((end - 1 - start) // skip),
    ).label("last_controlled_step")
    score_cols = [
        scaled_sql(pivot.c[f"s{i}"], scale, metric=m).label(score_header(m, b))
        for i, (m, b) in enumerate(pairs)
    ]
    # What generated each run (library versions, model identity, dtype, device), so an exported
    # score can be traced to the setup that produced it.
    from store.scoring import SCORER_EXPORT_COLUMNS, SESSION_EXPORT_COLUMNS

    sess = EngineSession.__table__
    # The model name and paths come from users: neutralised like every other text cell.
    session_cols = [
        _neutralised_sql(sess.c[name], f"session_{name}")
        if _python_type(sess.c[name]) is str
        else sess.c[name].label(f"session_{name}")
        for name in SESSION_EXPORT_COLUMNS
    ]
    joined = table.outerjoin(pivot, pivot.c.run_id == table.c.id).outerjoin(
        sess, sess.c.id == table.c.session_id
    )
    scorer_cols = []
    for i, (m, b) in enumerate(pairs):
        who = sess.alias(f"w{i}")
        joined = joined.outerjoin(who, who.c.id == pivot.c[f"w{i}"])
        hdr = score_header(m, b)
        scorer_cols.append(pivot.c[f"w{i}"].label(f"score_session_id:{hdr}"))
        for name in SCORER_EXPORT_COLUMNS:
            scorer_cols.append(_neutralised_sql(who.c[name], f"{_SCORER_NAMES[name]}:{hdr}"))
        scorer_cols.append(_neutralised_sql(pivot.c[f"p{i}"], f"score_preprocess:{hdr}"))
    q = (
        select(
            *cols,
            last_step,
            *score_cols,
            _neutralised_sql(pivot.c.scored_text, "scored_text"),
            *session_cols,
            *scorer_cols,
        )
        .select_from(joined)
        .where(table.c.experiment_id == experiment_id)
        .order_by(table.c.id)
    )
    header = (
        [c.name for c in table.columns]
        + ["last_controlled_step"]
        + [score_header(m, b) for m, b in pairs]
        + ["scored_text"]
        + [f"session_{name}" for name in SESSION_EXPORT_COLUMNS]
        + [c.name for c in scorer_cols]
    )
    return q, header


# A text cell starting with one of these is run as a formula by spreadsheet apps (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_text(v):
    """Neutralise a text cell a spreadsheet would run as a formula, with a leading single quote
    (OWASP's advice); numbers, negative ones included, are not text and stay numbers. Control,
    bidi and invisible characters are shown as escapes (store.safe_text): a CSV is also read
    with `cat` and `less`, where a raw ESC acts. Newlines and tabs stay (notes, tracebacks)."""
    if isinstance(v, str):
        v = safe_text(v, multiline=True)
        if v.startswith(_FORMULA_START):
            return "'" + v
    return v


def _csv_value(v):
    # Python datetimes only appear off SQLite; write them as the SQLite path does: naive UTC,
    # ISO 8601, "Z" (PostgreSQL sessions run in UTC, store.db).
    if isinstance(v, datetime):
        if v.tzinfo is not None:
            v = v.astimezone(UTC).replace(tzinfo=None)
        return v.isoformat() + "Z"
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return _csv_text(v)


def export_runs_csv(
    store: Store,
    experiment_id: int,
    path: str | os.PathLike,
    scale: str = "raw",
    folder: str | os.PathLike | None = None,
) -> Path:
    """Every run with every parameter, status, timing, tag, note and score (one column per
    metric/backbone, scaled by ``scale``). ``folder``: where relative paths go (default home/exports)."""
    _require_experiment(store, experiment_id)
    target = _target(store, path, ".csv", folder)
    q, header = runs_query(store, experiment_id, scale)
    with _atomic(target) as fh:
        csv.writer(fh).writerow([_csv_text(h) for h in header])
        for chunk in _prefetch(_stream(store, q)):
            # Formatting a chunk in memory and writing it once beat 5000 small writes by ~25%.
            buf = io.StringIO()
            csv.writer(buf).writerows(chunk)
            text = buf.getvalue()
            # The SQLite path hands raw rows over (formulas neutralised in SQL): one scan of the
            # formatted chunk finds the rare control or bidi character; only then is the chunk
            # redone cell by cell. The writer's own line ends are "\r\n".
            if not is_safe(text.replace("\r\n", "\n"), multiline=True):
                buf = io.StringIO()
                csv.writer(buf).writerows([_csv_text(v) for v in row] for row in chunk)
                text = buf.getvalue()
            fh.write(text)
    return target


def _prefetch(chunks: Iterator[list], depth: int = 4) -> Iterator[list]:
    """Iterate ``chunks`` in a helper thread. sqlite3 releases the GIL while it steps through the
    query, so fetching the next rows overlaps with csv formatting of the current ones."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not offer(chunk):
                    return
            offer(done)
        except BaseException as exc:  # handed to the consumer, raised there
            offer(exc)

    worker = threading.Thread(target=produce, name="mtp-export-fetch", daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


def _stream(store: Store, q, size: int = 5000) -> Iterator[list]:
    if not store.is_sqlite:
        for chunk in iter_rows(store, q, size):
            yield [[_csv_value(v) for v in row] for row in chunk]
        return
    yield from iter_rows(store, q, size)


# ------------------------------------------------------------------ summary CSV
# Every row repeats the table's unit, scale and image-alignment reference, so a row copied out
# of the file, or a file read without its header comment, still says what its numbers mean.
def summary_header(rows: list[AggregateRow]) -> list[str]:
    metrics = _summary_metrics(rows)
    head = [
        "by",
        "value",
        "is_baseline",
        "n_runs",
        "n_concepts",
        "n_cells",
        "runs_per_cell",
        "pareto",
        "unit",
        "n_unit",
        "n_text",
        "unit_definition",
        "cells",
        "cells_dropped",
        "incomplete",
        "lacks_planned_runs",
        "paired_against",
        "paired_definition",
        "scale",
        "image_alignment",
    ]
    for m in metrics:
        head += [
            f"{m}_backbone",
            f"{m}_n",
            f"{m}_mean",
            f"{m}_std",
            f"{m}_sem",
            f"{m}_scale",
            f"{m}_direction",
            f"{m}_compares",
            f"{m}_missing",
            f"{m}_diff_n",
            f"{m}_diff_mean",
            f"{m}_diff_sem",
            f"{m}_diff_ci95_low",
            f"{m}_diff_ci95_high",
        ]
    return head


def _summary_metrics(rows) -> list[str]:
    if isinstance(rows, Aggregate):
        return rows.metrics
    metrics: list[str] = []
    for r in rows:
        metrics += [
            m for m in list(r.metrics) + list(getattr(r, "missing", {})) if m not in metrics
        ]
    return metrics


def _number(value: float) -> float | str:
    # An undefined std/SEM (n = 1) is an empty cell, which pandas reads as NaN.
    return "" if math.isnan(value) else value


def summary_rows(rows: list[AggregateRow]) -> Iterator[list]:
    table = rows if isinstance(rows, Aggregate) else Aggregate(rows)
    metrics = _summary_metrics(rows)
    img = table.image_metric
    img_text = f"{img}: {metric_def(img).compares}" if img else ""
    for r in rows:
        lo, hi = getattr(r, "runs_per_cell", (0, 0))
        against = next((p.against for p in getattr(r, "paired", {}).values()), "")
        line = [
            r.by,
            "" if r.value is None else r.value,
            r.is_baseline,
            r.n_runs,
            r.n_concepts,
            r.n_cells,
            f"{lo}" if lo == hi else f"{lo}-{hi}",
            r.pareto,
            table.unit,
            r.n_concepts if table.unit == "concepts" else r.n_cells,
            r.n_text,
            table.unit_text,
            table.cells,
            "; ".join(f"{m}: {why}" for m, why in table.dropped.items()),
            r.incomplete,
            r.lacking,
            against,
            table.paired_text if against else "",
            table.scale,
            img_text,
        ]
        for m in metrics:
            st = r.metrics.get(m)
            tail = [
                table.scale_label(m),
                direction_text(m),
                metric_def(m).compares,
                "; ".join(r.missing.get(m, [])),
            ]
            if st:
                line += [
                    r.backbones.get(m, ""),
                    st.n,
                    st.mean,
                    _number(st.std),
                    _number(st.sem),
                ] + tail
            else:
                line += ["", 0, "", "", ""] + tail
            p = r.paired.get(m)
            line += (
                [p.n, p.mean, _number(p.sem), _number(p.low), _number(p.high)]
                if p
                else ["", "", "", "", ""]
            )
        yield line


def export_summary_csv(
    store: Store,
    experiment_id: int,
    by: str,
    path: str | os.PathLike,
    scale: str = "raw",
    folder: str | os.PathLike | None = None,
    rows: Aggregate | None = None,
    cells: str = "common",
    versus=None,
) -> Path:
    """``rows``: this experiment's ``aggregate(by, scale, cells=, versus=)`` when the caller
    already has it."""
    _require_experiment(store, experiment_id)
    check_by(by)
    target = _target(store, path, ".csv", folder)
    if rows is None:
        rows = aggregate(store, experiment_id, by, scale=scale, cells=cells, versus=versus)
    with _atomic(target) as fh:
        writer = csv.writer(fh)
        writer.writerow(summary_header(rows))
        writer.writerows([_csv_text(v) for v in line] for line in summary_rows(rows))
    return target


# ------------------------------------------------------------------ pictures
def export_plot_png(
    store: Store,
    experiment_id: int,
    by: str,
    path: str | os.PathLike,
    scale: str = "raw",
    folder: str | os.PathLike | None = None,
    cells: str = "common",
) -> Path:
    from .plots import render_tradeoff_png

    exp = _require_experiment(store, experiment_id)
    check_by(by)
    target = _target(store, path, ".png", folder)
    rows = aggregate(store, experiment_id, by, scale=scale, cells=cells)
    with _atomic(target, "wb") as fh:
        render_tradeoff_png(rows, fh, by=by, title=f"{exp.name}: text vs image alignment by {by}")
    return target


def export_grid_png(
    store: Store,
    experiment_id: int,
    by: str,
    path: str | os.PathLike,
    folder: str | os.PathLike | None = None,
    on_layout=None,
    **grid_options,
) -> Path:
    """``by`` is the Y axis; ``grid_options`` go to ``render_grid`` (x, z, pins, seeds, caps).
    ``on_layout`` receives the rendered layout (caption, missing images) for the caller to report."""
    from .grid_image import render_grid

    _require_experiment(store, experiment_id)
    check_by(by)
    target = _target(store, path, ".png", folder)
    layout = render_grid(store, experiment_id, by, **grid_options)
    if on_layout is not None:
        on_layout(layout)
    with _atomic(target, "wb") as fh:
        layout.image.save(fh, format="PNG", optimize=False)
    return target


__all__ = [
    "export_runs_csv",
    "export_summary_csv",
    "export_plot_png",
    "export_grid_png",
    "aggregate",
    "resolve_output",
    "safe_filename",
    "default_name",
    "image_metric",
]
