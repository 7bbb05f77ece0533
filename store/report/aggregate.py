"""Scores of an experiment aggregated per value of one swept parameter (torch-free).

The statistical unit is independent by construction (README, "Statistics"):
- runs that share a (prompt, seed) share their initial noise, so they are not independent. Per
  row (a value of the grouped axis) each (prompt, seed) **cell** is first averaged over the
  other swept settings; n, mean, std (sample, ddof=1) and SEM = std / sqrt(n) are then taken
  over cells (n = cells);
- a table spanning several concepts (not grouped by concept) goes one level up: each concept's
  cell means are averaged, and the statistics are over concepts (n = concepts), so a concept
  with more prompts does not outweigh the others.
Completeness is judged against the experiment's planned expansion (store.sweep.spec.expand), not
against the fullest row. By default (``cells="common"``) every row is computed over the cells
that are complete (every planned run scored) in every row, and the table says how many cells
were dropped and why; ``cells="all"`` uses every scored run and flags rows that lack planned
runs. A flagged (incomplete) row is never on the Pareto front, in any unit.
A paired column compares each row with the baseline (or a chosen row) over the same cells: the
mean difference, its paired SEM and a 95% interval from Student's t with n - 1 degrees of freedom.
Baseline runs (control off) form a separate row, one per value when grouping by a base setting
(seed, prompt, concept...): a baseline pooled over seeds is not the reference of one seed.
Scales are defined per metric (``METRICS``): Custom Diffusion's 2.5*max(cos, 0) is a text
alignment (CLIPScore) convention and never touches CLIP-I, DINO or DreamSim. DreamSim values
are distances (1 - cos, lower = more similar): every metric whose name starts with
``dreamsim`` is lower-is-better (``lower_is_better``) in Pareto fronts and labels.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, literal, literal_column, or_, select

from store.db import Store
from store.models import RUN_PARAM_COLUMNS, Concept, Experiment, Run, Score, otsu_value

TEXT_METRIC = "clip_t"
# The first one present is the image-alignment axis (a DreamSim distance counts lower as better).
IMAGE_METRICS = ("clip_i_ref", "clip_i_src", "dino_ref", "dino_src", "dreamsim_ref", "dreamsim_src")
SCALES = ("raw", "100", "clipscore")
CELL_MODES = ("common", "all")
METRIC_ORDER = (
    "clip_t",
    "clip_i_ref",
    "clip_i_src",
    "dino_ref",
    "dino_src",
    "dreamsim_ref",
    "dreamsim_src",
    "dreamsim",
    "clip_i_set",
    "dino_set",
    "dreamsim_set",
)
GROUPABLE = tuple(c for c in RUN_PARAM_COLUMNS if c != "is_baseline") + (
    "prompt_index",
    "concept_id",
)
# Settings shared by a run and its baseline: grouping by one of these splits the baseline too.
BASE_AXES = (
    # a set method's baselines carry that method, so grouping by method splits baselines too
    "method",
    "target_prompt",
    "prompt_index",
    "seed",
    "concept_id",
    "source_prompt",
    "num_steps",
    "guidance",
    "width",
    "height",
    "model",
    "inversion_guidance",
)
# A cell is (concept, prompt, seed); grouping by one of its parts fixes that part within a row,
# so rows are matched on the other parts (by seed: the same prompts in every row).
CELL_PARTS = ("concept_id", "prompt_index", "seed")
_CELL_PART_OF = {"concept_id": 0, "prompt_index": 1, "target_prompt": 1, "seed": 2}
UNDEFINED = "\u2013"  # how an undefined std/SEM is shown
CONFIDENCE = 0.95


def lower_is_better(metric: str | None) -> bool:
    """DreamSim scores are distances (1 - cos): lower = more similar. Any metric named
    ``dreamsim...`` (dreamsim_ref, dreamsim_src, dreamsim_set...) is one."""
    return bool(metric) and metric.startswith("dreamsim")


def direction_text(metric: str) -> str:
    return (
        "distance: lower = more similar"
        if lower_is_better(metric)
        else "similarity: higher = more similar"
    )


@dataclass(frozen=True)
class ScaleDef:
    formula: str
    source: str


SCALE_DEFS = {
    "raw": ScaleDef("cos", "DreamBench / raw cosine"),
    "100": ScaleDef("100*cos", "torchmetrics-style percent"),
    "clipscore": ScaleDef(
        "2.5*max(cos,0)", "CLIPScore as in Custom Diffusion (text alignment only)"
    ),
}
# What an unscaled value is, per kind of metric (the CSV's <metric>_scale, plot axes).
RAW_DISTANCE = "raw (1-cos, distance: lower = more similar)"


@dataclass(frozen=True)
class MetricDef:
    """What a metric compares and which scales its definition admits (others leave it raw)."""

    compares: str
    scales: tuple[str, ...] = ("raw",)


_COSINE = ("raw", "100")
METRICS: dict[str, MetricDef] = {
    "clip_t": MetricDef(
        "target image vs target prompt (token replaced by class word)", ("raw", "100", "clipscore")
    ),
    "clip_i_ref": MetricDef("target image vs concept reference images", _COSINE),
    "clip_i_src": MetricDef("target image vs source image", _COSINE),
    "dino_ref": MetricDef("target image vs concept reference images", _COSINE),
    "dino_src": MetricDef("target image vs source image", _COSINE),
    "clip_i_set": MetricDef("image vs the other images of its set (mean over pairs)", _COSINE),
    "dino_set": MetricDef("image vs the other images of its set (mean over pairs)", _COSINE),
}


def metric_def(metric: str) -> MetricDef:
    """The definition of ``metric``; metrics without an entry (e.g. ``dreamsim``, a distance)
    are never scaled, and what they compare is read from their ``_ref``/``_src`` suffix."""
    if metric in METRICS:
        return METRICS[metric]
    if metric.endswith("_ref"):
        return MetricDef("target image vs concept reference images")
    if metric.endswith("_src"):
        return MetricDef("target image vs source image")
    if metric.endswith("_set"):
        return MetricDef("image vs the other images of its set (mean over pairs)")
    return MetricDef("see the metric's definition")


def applied_scale(metric: str, scale: str) -> str:
    """The scale actually applied to ``metric`` when ``scale`` is asked for."""
    check_scale(scale)
    return scale if scale in metric_def(metric).scales else "raw"


def scale_label(metric: str, scale: str) -> str:
    """e.g. "raw (cos)", "clipscore (2.5*max(cos,0))", or for DreamSim the distance it is."""
    applied = applied_scale(metric, scale)
    if lower_is_better(metric):
        return RAW_DISTANCE
    return f"{applied} ({SCALE_DEFS[applied].formula})"


def check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale: {scale!r} is not one of {', '.join(SCALES)}")


@dataclass(frozen=True)
class Stat:
    n: int
    mean: float
    std: float  # sample standard deviation; NaN when n == 1 (undefined)
    sem: float  # NaN when n == 1


@dataclass(frozen=True)
class Paired:
    """A row minus its reference over the units both have: mean, std and SEM of the per-unit
    differences, and the 95% interval mean +- t(0.975, n-1) * SEM (NaN when n < 2)."""

    against: str
    n: int
    mean: float
    std: float
    sem: float
    low: float
    high: float

    @property
    def text(self) -> str:
        sign = "+" if self.mean >= 0 else ""
        if math.isnan(self.sem):
            return f"{sign}{fmt_number(self.mean)}"
        return f"{sign}{fmt_number(self.mean)} [{fmt_number(self.low)}, {fmt_number(self.high)}]"


def fmt_number(value: float | None, digits: int = 4) -> str:
    if value is None or math.isnan(value):
        return UNDEFINED
    return f"{value:.{digits}f}"


@dataclass
class AggregateRow:
    by: str
    value: Any  # the parameter value; None for a pooled baseline row
    is_baseline: bool
    n_runs: int  # scored runs used by this row (the most of any metric)
    n_concepts: int
    metrics: dict[str, Stat] = field(default_factory=dict)
    backbones: dict[str, str] = field(default_factory=dict)  # metric -> backbone used
    pareto: bool = False
    # metric -> what makes this row incomplete in the comparison (concept names, "k of K
    # planned runs", "no complete cell"); such a row is never on the Pareto front
    missing: dict[str, list[str]] = field(default_factory=dict)
    n_cells: int = 0  # cells used (the most of any metric)
    runs_per_cell: tuple[int, int] = (0, 0)  # fewest and most runs averaged into one cell
    paired: dict[str, Paired] = field(default_factory=dict)
    # metric -> "k of K planned runs" when the row lacks planned runs (common mode: the cells
    # they belong to were dropped from every row, so the row is still compared fairly)
    lacks: dict[str, str] = field(default_factory=dict)
    unit: str = "cells"
    cell_name: str = "(prompt, seed)"

    @property
    def label(self) -> str:
        if self.is_baseline:
            return "baseline" if self.value is None else f"baseline {self.by}={_fmt(self.value)}"
        return _fmt(self.value)

    @property
    def n_unit(self) -> int:
        return self.n_concepts if self.unit == "concepts" else self.n_cells

    @property
    def n_text(self) -> str:
        """e.g. "n = 12 (prompt, seed) cells, each the mean of 4 runs"."""
        lo, hi = self.runs_per_cell
        runs = f"{lo}" if lo == hi else f"{lo}-{hi}"
        runs += " run" if (lo, hi) == (1, 1) else " runs"
        if self.unit == "concepts":
            return (
                f"n = {self.n_concepts} concepts, each the mean of its {self.cell_name} cells "
                f"({self.n_cells} cells in all, each the mean of {runs})"
            )
        return f"n = {self.n_cells} {self.cell_name} cells, each the mean of {runs}"

    @property
    def incomplete(self) -> str:
        """What this row lacks, e.g. "clip_i_ref: concept B | all metrics: ..."; empty when complete."""
        by_gap: dict[tuple[str, ...], list[str]] = defaultdict(list)
        for metric, gap in self.missing.items():
            by_gap[tuple(gap)].append(metric)
        parts = []
        for gap, metrics in by_gap.items():
            which = (
                "all metrics"
                if set(metrics) >= set(self.metrics) | set(self.missing)
                else ", ".join(metrics)
            )
            parts.append(f"{which}: {', '.join(gap)}")
        return " | ".join(parts)

    @property
    def lacking(self) -> str:
        """Planned runs this row lacks, per metric (empty when it has every planned run)."""
        by_gap: dict[str, list[str]] = defaultdict(list)
        for metric, gap in self.lacks.items():
            by_gap[gap].append(metric)
        return " | ".join(f"{', '.join(ms)}: {gap}" for gap, ms in by_gap.items())

    def mean(self, metric: str | None) -> float | None:
        st = self.metrics.get(metric) if metric else None
        return st.mean if st else None


class Aggregate(list):
    """The rows of one table plus what a reader needs to interpret them."""

    def __init__(
        self,
        rows: Iterable[AggregateRow] = (),
        by: str = "",
        unit: str = "cells",
        unit_text: str = "",
        scale: str = "raw",
        concepts: dict[Any, str] | None = None,
        cells: str = "common",
        reference: str = "",
        dropped: dict[str, str] | None = None,
        plan: str = "",
    ):
        super().__init__(rows)
        self.by, self.unit, self.unit_text, self.scale = by, unit, unit_text, scale
        self.concepts = concepts or {}
        self.cells = cells  # "common" or "all"
        self.reference = reference  # the label of the row the paired column compares with
        self.dropped = dropped or {}  # metric -> why cells were dropped (common mode)
        self.plan = plan  # where completeness is judged from

    @property
    def metrics(self) -> list[str]:
        out: list[str] = []
        for r in self:
            out += [m for m in list(r.metrics) + list(r.missing) if m not in out]
        return sorted(out, key=_metric_key)

    def scale_of(self, metric: str) -> str:
        return applied_scale(metric, self.scale)

    def scale_label(self, metric: str) -> str:
        return scale_label(metric, self.scale)

    @property
    def image_metric(self) -> str | None:
        return image_metric(self)

    @property
    def cells_text(self) -> str:
        if self.cells == "all":
            return (
                "cells: all scored runs (rows lacking planned runs are flagged and never on "
                "the Pareto front)"
            )
        if not self.dropped:
            return "cells: every row complete against the plan; none dropped"
        return "cells: those complete in every row; " + "; ".join(
            f"{m}: {why}" for m, why in self.dropped.items()
        )

    @property
    def paired_text(self) -> str:
        if not self.reference:
            return "paired: no reference row (no baseline)"
        return (
            f"paired: difference to {self.reference} over the same "
            f"{'concepts' if self.unit == 'concepts' else 'cells'}; paired SEM = std(diff)/sqrt(n); "
            f"95% interval = mean +- t(0.975, n-1) * SEM (Student's t)"
        )

    def brief(self) -> list[str]:
        """``describe`` in short, for a screen line: unit, cells, paired column, scale."""
        cells = cell_name(self.by)
        unit = (
            f"unit: concepts (each the mean of its {cells} cells); SEM over concepts"
            if self.unit == "concepts"
            else f"unit: {cells} cells (other settings averaged first); SEM over cells"
        )
        if self.cells == "all":
            kept = "all runs; short rows flagged"
        elif self.dropped:
            kept = "; ".join(f"{m}: {why}" for m, why in self.dropped.items())
        else:
            kept = "no cell dropped"
        lines = [unit, kept]
        texts = list(dict.fromkeys(r.n_text for r in self if not r.is_baseline))
        if len(texts) == 1:
            lines.append(texts[0])  # e.g. "n = 12 (prompt, seed) cells, each the mean of 4 runs"
        if self.reference:
            lines.append(f"Δ vs {self.reference}: paired, 95% t interval")
        lines.append(
            f"scale {self.scale}" + (f" on {TEXT_METRIC}" if self.scale == "clipscore" else "")
        )
        if any(lower_is_better(m) for m in self.metrics):
            lines.append("dreamsim: distance, lower = closer")
        img = self.image_metric
        if img:
            lines.append(f"image = {img}")
        return lines

    def describe(self) -> list[str]:
        """Lines stating unit, completeness, paired column, scale and references."""
        lines = [f"unit: {self.unit_text}", self.cells_text, self.paired_text]
        if self.plan:
            lines.append(f"completeness judged against {self.plan}")
        scaled = [m for m in self.metrics if self.scale_of(m) != "raw"]
        if self.scale != "raw":
            lines.append(
                f"scale {self.scale} ({SCALE_DEFS[self.scale].formula}) on "
                f"{', '.join(scaled) or 'no metric'}; other metrics unscaled"
            )
        else:
            lines.append("scale: raw cosine (similarity: higher = more similar)")
        distances = [m for m in self.metrics if lower_is_better(m)]
        if distances:
            lines.append(
                f"{', '.join(distances)}: DreamSim distance 1-cos (lower = more similar); "
                "Pareto and best treat it as lower-is-better"
            )
        img = self.image_metric
        if img:
            lines.append(f"image alignment = {img}: {metric_def(img).compares}")
        return lines


def _metric_key(m: str):
    return (METRIC_ORDER.index(m) if m in METRIC_ORDER else 99, m)


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "-" if value is None else str(value)


def scale_value(value: float, scale: str, metric: str | None = None) -> float:
    """raw cosine (DreamBench), 100*cos (torchmetrics), 2.5*max(cos, 0) (Custom Diffusion / CLIPScore).
    With ``metric``, a scale the metric's definition does not admit leaves the value raw."""
    check_scale(scale)
    if metric is not None:
        scale = applied_scale(metric, scale)
    if scale == "raw":
        return value
    if scale == "100":
        return 100.0 * value
    return 2.5 * max(value, 0.0)


def stat(values: Sequence[float]) -> Stat:
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Stat(n, mean, math.nan, math.nan)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Stat(n, mean, std, std / math.sqrt(n))


def stat_from_sums(n: int, total: float, squares: float) -> Stat:
    """Stat from n, sum and sum of squares. Cancellation costs ~1e-8 absolute on the std of
    cosines, far below any difference worth reporting."""
    mean = total / n
    if n < 2:
        return Stat(n, mean, math.nan, math.nan)
    std = math.sqrt(max(0.0, (squares - total * mean) / (n - 1)))
    return Stat(n, mean, std, std / math.sqrt(n))


def paired(against: str, diffs: Sequence[float]) -> Paired | None:
    if not diffs:
        return None
    st = stat(diffs)
    if st.n < 2:
        return Paired(against, st.n, st.mean, math.nan, math.nan, math.nan, math.nan)
    half = t_quantile(0.5 + CONFIDENCE / 2, st.n - 1) * st.sem
    return Paired(against, st.n, st.mean, st.std, st.sem, st.mean - half, st.mean + half)


def _t_cdf(t: float, df: float) -> float:
    """Student's t CDF through the regularized incomplete beta function."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) (continued fraction, Numerical Recipes' betacf)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return front * h / a


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (bisection on the CDF: the
    app side has no scipy). t_quantile(0.975, 11) = 2.2010."""
    if df < 1 or not 0.0 < p < 1.0:
        return math.nan
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2.0


def scaled_sql(expr, scale: str, metric=None):
    """``scale_value`` as a SQL expression, so scaling happens before any averaging. ``metric``:
    a metric name, or a SQL column holding it, so only metrics that admit the scale are scaled."""
    check_scale(scale)
    if scale == "raw":
        return expr
    scaled = expr * 100.0 if scale == "100" else case((expr > 0, expr * 2.5), else_=literal(0.0))
    if metric is None:
        return scaled
    if isinstance(metric, str):
        return scaled if applied_scale(metric, scale) == scale else expr
    admitted = [m for m, d in METRICS.items() if scale in d.scales]
    # OR of equalities, not IN: an expanding IN cannot run through the raw cursor of iter_rows.
    return case((or_(*(metric == m for m in admitted)), scaled), else_=expr)


def check_by(by: str) -> None:
    from store.queries import InputError

    if by not in GROUPABLE:
        raise InputError(f"--by: cannot group by {by!r}; choose one of {', '.join(GROUPABLE)}")


def check_cells(cells: str) -> None:
    from store.queries import InputError

    if cells not in CELL_MODES:
        raise InputError(f"--cells: {cells!r} is not one of {', '.join(CELL_MODES)}")


def image_metric(rows: Iterable[AggregateRow]) -> str | None:
    present = {m for r in rows for m in r.metrics}
    return next((m for m in IMAGE_METRICS if m in present), None)


def mark_pareto(
    rows: list[AggregateRow],
    x_metric: str = TEXT_METRIC,
    y_metric: str | None = None,
    exclude_incomplete: bool = True,
) -> None:
    """Flag the non-baseline rows no other row beats on both axes. A metric that is a distance
    (``lower_is_better``) counts lower as better. Incomplete rows are never on the front."""
    y_metric = y_metric or image_metric(rows)
    sx = -1.0 if lower_is_better(x_metric) else 1.0
    sy = -1.0 if lower_is_better(y_metric) else 1.0
    points = [
        (r, r.mean(x_metric), r.mean(y_metric))
        for r in rows
        if not r.is_baseline
        and not (exclude_incomplete and (x_metric in r.missing or y_metric in r.missing))
    ]
    points = [(r, sx * x, sy * y) for r, x, y in points if x is not None and y is not None]
    for r in rows:
        r.pareto = False
    for r, x, y in points:
        r.pareto = not any(
            ox >= x and oy >= y and (ox > x or oy > y) for o, ox, oy in points if o is not r
        )


def best_row(rows: Iterable[AggregateRow], metric: str) -> AggregateRow | None:
    """The complete non-baseline row with the best mean of ``metric`` (lowest for a distance)."""
    cands = [
        r for r in rows if not r.is_baseline and metric in r.metrics and metric not in r.missing
    ]
    if not cands:
        return None
    sign = 1.0 if lower_is_better(metric) else -1.0
    return min(cands, key=lambda r: sign * r.metrics[metric].mean)


def iter_rows(store: Store, q, size: int = 10_000) -> Iterator[list]:
    """Result tuples of a Core query in chunks. On SQLite the compiled statement runs on the DBAPI
    cursor: SQLAlchemy's per-value result processing was half the time of a 100k-run export."""
    if not store.is_sqlite:
        with store.engine.connect() as conn:
            for chunk in conn.execution_options(stream_results=True).execute(q).partitions(size):
                yield [tuple(row) for row in chunk]
        return
    compiled = q.compile(dialect=store.engine.dialect, compile_kwargs={"render_postcompile": True})
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


def _choose_backbones(counts: Mapping[str, Counter], prefer: str | None) -> dict[str, str]:
    out = {}
    for metric, c in counts.items():
        if prefer and prefer in c:
            out[metric] = prefer
        else:
            out[metric] = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    return out


def _concept_names(store: Store, ids: Iterable[Any]) -> dict[Any, str]:
    ids = set(ids)
    with store.session() as s:
        names = {
            cid: name
            for cid, name in s.execute(
                select(Concept.id, Concept.name).where(
                    Concept.id.in_([i for i in ids if i is not None])
                )
            )
        }
    return {i: names.get(i, "(no concept)" if i is None else f"concept {i}") for i in ids}


def cell_name(by: str) -> str:
    """What a cell is within one row: grouping by seed leaves the prompts, by prompt the seeds."""
    part = _CELL_PART_OF.get(by)
    if part == 2:
        return "(prompt)"
    if part == 1:
        return "(seed)"
    return "(prompt, seed)"


def unit_for(by: str, n_concepts: int) -> tuple[str, str]:
    """(unit, sentence) for a table grouped by ``by`` over ``n_concepts`` scored concepts."""
    cells = cell_name(by)
    if by != "concept_id" and n_concepts > 1:
        return "concepts", (
            f"concepts: each {cells} cell is averaged over the other swept settings, each concept "
            f"over its cells; mean, std (n-1) and SEM over concepts (SEM = std/sqrt(n)); n = concepts"
        )
    scope = "per concept: " if by == "concept_id" else ""
    return "cells", (
        f"{scope}{cells} cells: each cell's runs are averaged over the other swept settings first "
        f"(runs sharing a prompt and seed share their initial noise); mean, std (n-1) and "
        f"SEM over cells (SEM = std/sqrt(n)); n = cells"
    )


def _value_of(by: str, value: Any, mask_mode: Any) -> Any:
    return otsu_value(mask_mode, value) if by == "mask_threshold" else value


def _reducer(by: str):
    """(concept, prompt, seed) -> the cell without the part a row grouped by ``by`` fixes, so
    rows are matched on the rest (grouping by seed matches rows on (concept, prompt))."""
    part = _CELL_PART_OF.get(by)
    if part == 0:
        return lambda concept, prompt, seed: (prompt, seed)
    if part == 1:
        return lambda concept, prompt, seed: (concept, seed)
    if part == 2:
        return lambda concept, prompt, seed: (concept, prompt)
    return lambda concept, prompt, seed: (concept, prompt, seed)


def _planned(store: Store, experiment_id: int, by: str, split: bool):
    """Planned runs per (row key, cell) from the experiment's expansion, and its first grid
    index; None when the spec cannot reproduce the stored runs (an old or hand-made experiment:
    the runs in the database are then the plan)."""
    from store.sweep.spec import ExperimentSpec, expand

    with store.session() as s:
        exp = s.get(Experiment, experiment_id)
        concept = s.get(Concept, exp.concept_id) if exp and exp.concept_id else None
    if exp is None or not exp.run_count:
        return None
    try:
        plan = expand(ExperimentSpec.from_json(exp.spec_json), concept)
    except Exception:  # a spec this version cannot expand: fall back to the stored runs
        return None
    if len(plan) != exp.run_count:
        return None
    reduce = _reducer(by)
    out: dict[tuple, dict[tuple, list[int]]] = defaultdict(dict)
    for row in plan:
        value = row.get("prompt_index") if by == "prompt_index" else row.get(by)
        value = _value_of(by, value, row.get("mask_mode"))
        key = _row_key(bool(row["is_baseline"]), value, split)
        cell = reduce(row.get("concept_id"), row.get("prompt_index"), row.get("seed"))
        acc = out[key].setdefault(cell, [0, row["grid_index"]])
        acc[0] += 1
        acc[1] = min(acc[1], row["grid_index"])
    return out


def _row_key(is_base: bool, value: Any, split: bool) -> tuple:
    return ("__baseline__", value if split else None) if is_base else ("value", value)


def aggregate(
    store: Store,
    experiment_id: int,
    by: str,
    scale: str = "raw",
    backbone: str | None = None,
    cells: str = "common",
    versus: Any = None,
) -> Aggregate:
    """Baseline row(s) first (if any), then one row per value of ``by`` in sweep order.

    ``cells``: "common" (rows compared over the cells complete in every row) or "all" (every
    scored run; rows lacking planned runs flagged). ``versus``: the value of ``by`` the paired
    column compares with (its text as shown, e.g. "20" or "otsu"); None: the baseline."""
    check_by(by)
    check_scale(scale)  # validates the name before any work
    check_cells(cells)
    param = Run.prompt_index if by == "prompt_index" else getattr(Run, by)
    split = by in BASE_AXES
    # The mask mode tells an Otsu threshold (NULL) from an unmasked run's; other axes need not it.
    mode_col = Run.mask_mode if by == "mask_threshold" else literal_column("''")
    keys = [Run.is_baseline, param, Run.concept_id, Run.prompt_index, Run.seed]
    if by == "mask_threshold":
        keys.insert(2, Run.mask_mode)
    reduce = _reducer(by)
    v = scaled_sql(Score.value, scale, metric=Score.metric)
    # Sums per (row value, cell, metric, backbone) in SQL: one row per cell and metric comes
    # back instead of one per score (Python-side loops over scores took 4x longer on 100k runs).
    q = (
        select(
            *keys[:2], mode_col, *keys[-3:], Score.metric, Score.backbone, func.count(), func.sum(v)
        )
        .join(Score, Score.run_id == Run.id)
        .where(Run.experiment_id == experiment_id)
        .group_by(*keys, Score.metric, Score.backbone)
    )
    groups = [row for chunk in iter_rows(store, q) for row in chunk]
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in groups:
        counts[row[6]][row[7]] += row[8]
    backbones = _choose_backbones(counts, backbone)
    if not backbones:
        return Aggregate(by=by, unit_text=unit_for(by, 0)[1], scale=scale, cells=cells)
    # The runs that exist (any status): the plan when the spec cannot give one.
    rq = (
        select(*keys[:2], mode_col, *keys[-3:], func.count(), func.min(Run.grid_index))
        .where(Run.experiment_id == experiment_id)
        .group_by(*keys)
    )
    stored: dict[tuple, dict[tuple, list[int]]] = defaultdict(dict)
    for is_base, value, mode, concept, prompt, seed, n, first in (
        row for chunk in iter_rows(store, rq) for row in chunk
    ):
        key = _row_key(bool(is_base), _value_of(by, value, mode), split)
        acc = stored[key].setdefault(reduce(concept, prompt, seed), [0, first])
        acc[0] += n
        acc[1] = min(acc[1], first)
    plan = _planned(store, experiment_id, by, split)
    if plan is not None and any(
        cell not in plan.get(key, {}) or n > plan[key][cell][0]
        for key, per in stored.items()
        for cell, (n, _first) in per.items()
    ):
        plan = None  # stored runs the spec does not plan (edited or hand-made): trust the runs
    plan_text = "the experiment's planned grid" if plan is not None else "the runs stored"
    planned = plan if plan is not None else stored

    # key -> metric -> cell (as matched across rows) -> [n scored, sum, concept]
    sums: dict[tuple, dict[str, dict[tuple, list]]] = defaultdict(lambda: defaultdict(dict))
    for is_base, value, mode, concept, prompt, seed, metric, used, n, s1 in groups:
        if used != backbones[metric]:
            continue
        key = _row_key(bool(is_base), _value_of(by, value, mode), split)
        acc = sums[key][metric].setdefault(reduce(concept, prompt, seed), [0, 0.0, concept])
        acc[0] += n
        acc[1] += s1

    concepts = _concept_names(
        store, {c[2] for per in sums.values() for cs in per.values() for c in cs.values()}
    )
    unit, unit_text = unit_for(by, len(concepts))
    all_metrics = sorted({m for per in sums.values() for m in per}, key=_metric_key)
    order = {key: min(first for _n, first in per.values()) for key, per in planned.items() if per}
    row_keys = sorted(
        set(sums) | {k for k in planned if k in sums},
        key=lambda k: (k[0] != "__baseline__", order.get(k, 1 << 62)),
    )
    # Per metric: which cells each row has complete (every planned run scored), and the cells
    # all rows with any complete cell share.
    common: dict[str, set] = {}
    dropped: dict[str, str] = {}
    every = {c for key in row_keys for c in planned.get(key, {})}
    for metric in all_metrics:
        per_row = {}
        for key in row_keys:
            have = sums[key].get(metric, {})
            per_row[key] = {
                cell
                for cell, (n_plan, _f) in planned.get(key, {}).items()
                if cell in have and have[cell][0] >= n_plan
            }
        nonempty = [s for s in per_row.values() if s]
        shared = set.intersection(*nonempty) if nonempty else set()
        common[metric] = shared
        if cells == "common" and len(every) > len(shared):
            culprits = []
            for key in row_keys:
                lost = every - per_row[key]
                if lost:
                    culprits.append(f"{_key_label(by, key)} ({len(lost)})")
            dropped[metric] = (
                f"{len(every) - len(shared)} of {len(every)} cells dropped, incomplete in "
                + ", ".join(culprits)
            )

    rows = Aggregate(
        by=by,
        unit=unit,
        unit_text=unit_text,
        scale=scale,
        concepts=concepts,
        cells=cells,
        dropped=dropped,
        plan=plan_text,
    )
    # Per row and metric, the cell means it uses: reduced cell -> (concept, mean, runs averaged).
    used_cells: dict[tuple, dict[str, dict[tuple, tuple[Any, float, int]]]] = {}
    for key in row_keys:
        per_metric: dict[str, dict[tuple, tuple[Any, float, int]]] = {}
        metrics: dict[str, Stat] = {}
        missing: dict[str, list[str]] = {}
        lacks: dict[str, str] = {}
        for metric in all_metrics:
            have = sums[key].get(metric, {})
            plan_row = planned.get(key, {})
            n_plan = sum(n for n, _f in plan_row.values())
            n_have = sum(
                min(h[0], plan_row[c][0]) if c in plan_row else h[0] for c, h in have.items()
            )
            if n_have < n_plan:
                lacks[metric] = f"{n_have} of {n_plan} planned runs"
            if cells == "common":
                shared = common[metric]
                chosen = {c: (h[2], h[1] / h[0], h[0]) for c, h in have.items() if c in shared}
                if not chosen and have:
                    missing[metric] = ["no cell complete in every row"]
            else:
                chosen = {c: (h[2], h[1] / h[0], h[0]) for c, h in have.items()}
                if metric in lacks:
                    missing[metric] = [lacks[metric]]
            if unit == "concepts" and cells == "all":
                # a metric some concept lacks: the row is not the mean over the table's concepts
                # (with common cells every row has the same concepts, and the drop is reported)
                present = {x[0] for x in chosen.values()}
                absent = sorted(concepts[c] for c in concepts if c not in present)
                if absent:
                    missing[metric] = absent + [g for g in missing.get(metric, [])]
            if not chosen:
                if metric not in missing:
                    missing[metric] = ["no runs"]
                continue
            per_metric[metric] = chosen
            metrics[metric] = _unit_stat(chosen, unit)
        used_cells[key] = per_metric
        n_cells = max((len(c) for c in per_metric.values()), default=0)
        runs = [n for c in per_metric.values() for _c, _m, n in c.values()]
        n_runs = max((sum(n for _c, _m, n in c.values()) for c in per_metric.values()), default=0)
        n_concepts = len({c for ch in per_metric.values() for c, _m, _n in ch.values()})
        rows.append(
            AggregateRow(
                by=by,
                value=key[1],
                is_baseline=key[0] == "__baseline__",
                n_runs=n_runs,
                n_concepts=n_concepts,
                metrics=metrics,
                backbones={m: backbones[m] for m in metrics},
                missing=missing,
                n_cells=n_cells,
                runs_per_cell=(min(runs), max(runs)) if runs else (0, 0),
                lacks=lacks,
                unit=unit,
                cell_name=cell_name(by),
            )
        )
    _add_paired(rows, row_keys, used_cells, by, versus, split, unit)
    mark_pareto(rows)
    return rows


def _key_label(by: str, key: tuple) -> str:
    if key[0] == "__baseline__":
        return "baseline" if key[1] is None else f"baseline {by}={_fmt(key[1])}"
    return f"{by}={_fmt(key[1])}"


def _unit_stat(chosen: dict[tuple, tuple[Any, float, int]], unit: str) -> Stat:
    if unit != "concepts":
        return stat([m for _c, m, _n in chosen.values()])
    per_concept: dict[Any, list[float]] = defaultdict(list)
    for c, m, _n in chosen.values():
        per_concept[c].append(m)
    return stat([math.fsum(v) / len(v) for v in per_concept.values()])


def _add_paired(rows, row_keys, used_cells, by, versus, split, unit) -> None:
    """Each row minus its reference over the cells (or concepts) both use."""
    index = dict(zip(row_keys, rows))
    if versus is not None:
        want = str(versus).strip()
        ref_key = next(
            (k for k in row_keys if k[0] == "value" and (_fmt(k[1]) == want or str(k[1]) == want)),
            None,
        )
        if ref_key is None:
            from store.queries import InputError

            shown = ", ".join(_fmt(k[1]) for k in row_keys if k[0] == "value")
            raise InputError(f"--versus: {by} has no value {want!r} (values: {shown})")
        refs = {k: ref_key for k in row_keys if k != ref_key}
    else:
        bases = [k for k in row_keys if k[0] == "__baseline__"]
        refs = {}
        for k in row_keys:
            if k[0] == "__baseline__":
                continue
            ref = ("__baseline__", k[1] if split else None)
            if ref in index:
                refs[k] = ref
        ref_key = bases[0] if len(bases) == 1 else None
    rows.reference = (
        index[ref_key].label
        if ref_key is not None
        else ("the baseline of the same value" if refs else "")
    )
    for key, ref in refs.items():
        row, mine, theirs = index[key], used_cells.get(key, {}), used_cells.get(ref, {})
        for metric, cells in mine.items():
            other = theirs.get(metric, {})
            shared = [c for c in cells if c in other]
            if unit == "concepts":
                per_concept: dict[Any, list[float]] = defaultdict(list)
                for c in shared:
                    per_concept[cells[c][0]].append(cells[c][1] - other[c][1])
                diffs = [math.fsum(v) / len(v) for v in per_concept.values()]
            else:
                diffs = [cells[c][1] - other[c][1] for c in shared]
            p = paired(index[ref].label, diffs)
            if p is not None:
                row.paired[metric] = p


def sem_over_runs(store: Store, experiment_id: int, by: str, metric: str = TEXT_METRIC) -> dict:
    """{row label: SEM over runs}, the former unit, for comparing with the cell unit (the
    README's "Statistics" and the benchmark notes quote the ratio)."""
    param = Run.prompt_index if by == "prompt_index" else getattr(Run, by)
    q = (
        select(Run.is_baseline, param, Run.mask_mode, Score.value)
        .join(Score, Score.run_id == Run.id)
        .where(Run.experiment_id == experiment_id, Score.metric == metric)
    )
    vals: dict[str, list[float]] = defaultdict(list)
    split = by in BASE_AXES
    for is_base, value, mode, score in (row for chunk in iter_rows(store, q) for row in chunk):
        vals[_key_label(by, _row_key(bool(is_base), _value_of(by, value, mode), split))].append(
            score
        )
    return {k: stat(v).sem for k, v in vals.items()}
