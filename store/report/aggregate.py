"""Scores of an experiment aggregated per value of one swept parameter (torch-free).

Each run contributes one value per metric (its target image). Per parameter value we report
n, mean, std (sample, ddof=1) and SEM = std / sqrt(n) over prompts x seeds. When an experiment
mixes several concepts, runs are averaged per concept first and the statistics are taken over
the concept means, so a concept with more prompts does not outweigh the others.
Baseline runs (control off) form one separate row: the reference point of every plot.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from sqlalchemy import case, func, literal, or_, select

from store.db import Store
from store.models import RUN_PARAM_COLUMNS, Run, Score

TEXT_METRIC = "clip_t"
IMAGE_METRICS = ("clip_i_ref", "clip_i_src")  # the first one present is the image-alignment axis
SCALES = ("raw", "100", "clipscore")
METRIC_ORDER = ("clip_t", "clip_i_ref", "clip_i_src", "dino_ref", "dino_src")
GROUPABLE = tuple(c for c in RUN_PARAM_COLUMNS if c != "is_baseline") + ("prompt_index", "concept_id")


@dataclass(frozen=True)
class Stat:
    n: int
    mean: float
    std: float  # sample standard deviation; 0 when n == 1
    sem: float


@dataclass
class AggregateRow:
    by: str
    value: Any  # the parameter value; None for the baseline row
    is_baseline: bool
    n_runs: int
    n_concepts: int
    metrics: dict[str, Stat] = field(default_factory=dict)
    backbones: dict[str, str] = field(default_factory=dict)  # metric -> backbone used
    pareto: bool = False

    @property
    def label(self) -> str:
        return "baseline" if self.is_baseline else _fmt(self.value)

    def mean(self, metric: str | None) -> float | None:
        st = self.metrics.get(metric) if metric else None
        return st.mean if st else None


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "-" if value is None else str(value)


def scale_value(value: float, scale: str) -> float:
    """raw cosine (DreamBench), 100*cos (torchmetrics), 2.5*max(cos, 0) (Custom Diffusion / CLIPScore)."""
    if scale == "raw":
        return value
    if scale == "100":
        return 100.0 * value
    if scale == "clipscore":
        return 2.5 * max(value, 0.0)
    raise ValueError(f"scale: {scale!r} is not one of {', '.join(SCALES)}")


def stat(values: Sequence[float]) -> Stat:
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return Stat(n, mean, std, std / math.sqrt(n))


def stat_from_sums(n: int, total: float, squares: float) -> Stat:
    """Stat from n, sum and sum of squares. Cancellation costs ~1e-8 absolute on the std of
    cosines, far below any difference worth reporting."""
    mean = total / n
    var = max(0.0, (squares - total * mean) / (n - 1)) if n > 1 else 0.0
    std = math.sqrt(var)
    return Stat(n, mean, std, std / math.sqrt(n))


def scaled_sql(expr, scale: str):
    """``scale_value`` as a SQL expression, so scaling happens before any averaging."""
    if scale == "raw":
        return expr
    if scale == "100":
        return expr * 100.0
    if scale == "clipscore":
        return case((expr > 0, expr * 2.5), else_=literal(0.0))
    raise ValueError(f"scale: {scale!r} is not one of {', '.join(SCALES)}")


def check_by(by: str) -> None:
    from store.queries import InputError

    if by not in GROUPABLE:
        raise InputError(f"--by: cannot group by {by!r}; choose one of {', '.join(GROUPABLE)}")


def image_metric(rows: Iterable[AggregateRow]) -> str | None:
    present = {m for r in rows for m in r.metrics}
    return next((m for m in IMAGE_METRICS if m in present), None)


def mark_pareto(rows: list[AggregateRow], x_metric: str = TEXT_METRIC, y_metric: str | None = None) -> None:
    """Flag the non-baseline rows no other row beats on both text and image alignment."""
    y_metric = y_metric or image_metric(rows)
    points = [(r, r.mean(x_metric), r.mean(y_metric)) for r in rows if not r.is_baseline]
    points = [(r, x, y) for r, x, y in points if x is not None and y is not None]
    for r in rows:
        r.pareto = False
    for r, x, y in points:
        r.pareto = not any(ox >= x and oy >= y and (ox > x or oy > y) for o, ox, oy in points if o is not r)


def iter_rows(store: Store, q, size: int = 10_000) -> Iterator[list]:
    """Result tuples of a Core query in chunks. On SQLite the compiled statement runs on the DBAPI
    cursor: SQLAlchemy's per-value result processing was half the time of a 100k-run export."""
    if not store.is_sqlite:
        with store.engine.connect() as conn:
            for chunk in conn.execution_options(stream_results=True).execute(q).partitions(size):
                yield [tuple(row) for row in chunk]
        return
    compiled = q.compile(dialect=store.engine.dialect)
    params = [compiled.params[name] for name in compiled.positiontup]
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(str(compiled), params)
        while chunk := cur.fetchmany(size):
            yield chunk
        cur.close()
    finally:
        raw.close()


def _pick_backbones(store: Store, experiment_id: int, prefer: str | None) -> dict[str, str]:
    """Per metric, the preferred backbone when it scored that metric, else the most used one."""
    q = (select(Score.metric, Score.backbone, func.count())
         .join(Run, Run.id == Score.run_id)
         .where(Run.experiment_id == experiment_id)
         .group_by(Score.metric, Score.backbone))
    counts: dict[str, Counter] = defaultdict(Counter)
    with store.session() as s:
        for metric, backbone, n in s.execute(q):
            counts[metric][backbone] = n
    out = {}
    for metric, c in counts.items():
        if prefer and prefer in c:
            out[metric] = prefer
        else:
            out[metric] = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    return out


def aggregate(store: Store, experiment_id: int, by: str, scale: str = "raw",
              backbone: str | None = None) -> list[AggregateRow]:
    """Baseline row first (if any), then one row per value of ``by`` in sweep order."""
    check_by(by)
    scale_value(0.0, scale)  # validates the name before any work
    backbones = _pick_backbones(store, experiment_id, backbone)
    if not backbones:
        return []
    param = getattr(Run, by)
    chosen = [(Score.metric == m) & (Score.backbone == b) for m, b in backbones.items()]
    v = scaled_sql(Score.value, scale)
    # Sums per (value, concept, metric) in SQL: one pass, 30 rows back instead of 500k
    # (Python-side loops took 4x longer on a 100k-run sweep).
    q = (select(Run.is_baseline, param, Run.concept_id, Score.metric, func.count(), func.sum(v), func.sum(v * v),
                func.min(Run.grid_index))
         .join(Score, Score.run_id == Run.id)
         .where(Run.experiment_id == experiment_id, or_(*chosen))
         .group_by(Run.is_baseline, param, Run.concept_id, Score.metric))
    # key -> concept -> metric -> [n, sum, sum of squares]
    sums: dict[Any, dict[Any, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(dict))
    order: dict[Any, int] = {}
    for chunk in iter_rows(store, q):
        for is_base, value, concept, metric, n, s1, s2, grid_index in chunk:
            key = ("__baseline__",) if is_base else ("value", value)
            acc = sums[key][concept].setdefault(metric, [0, 0.0, 0.0])
            acc[0] += n
            acc[1] += s1
            acc[2] += s2
            order[key] = min(order.get(key, grid_index), grid_index)

    rows: list[AggregateRow] = []
    for key in sorted(sums, key=lambda k: (k[0] != "__baseline__", order[k])):
        per_concept = sums[key]
        metrics: dict[str, Stat] = {}
        for metric in sorted({m for c in per_concept.values() for m in c},
                             key=lambda m: (METRIC_ORDER.index(m) if m in METRIC_ORDER else 99, m)):
            accs = [c[metric] for c in per_concept.values() if metric in c]
            if len(per_concept) > 1:
                metrics[metric] = stat([s1 / n for n, s1, _ in accs])
            else:
                metrics[metric] = stat_from_sums(*accs[0])
        is_base = key[0] == "__baseline__"
        n_runs = max(sum(c[m][0] for c in per_concept.values() if m in c) for m in metrics)
        rows.append(AggregateRow(by=by, value=None if is_base else key[1], is_baseline=is_base,
                                 n_runs=n_runs, n_concepts=len(per_concept), metrics=metrics,
                                 backbones={m: backbones[m] for m in metrics}))
    mark_pareto(rows)
    return rows
