"""Text- vs image-alignment trade-off plots: PNG (matplotlib, Agg) and terminal (plotext).

One point per parameter value with SEM error bars, joined in sweep order, labelled with the
value; the baseline (control off) is overlaid as a reference and Pareto points are ringed.
matplotlib is imported inside the functions so the TUI starts without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import IO, Any

from store.safe_text import safe_text

from .aggregate import (
    TEXT_METRIC,
    Aggregate,
    AggregateRow,
    image_metric,
    lower_is_better,
    mark_pareto,
)

AXIS_NAMES = {
    "clip_t": "text alignment (CLIP-T)",
    "clip_i_ref": "image alignment (CLIP-I, references)",
    "clip_i_src": "image alignment (CLIP-I, source)",
    "dreamsim_ref": "DreamSim distance to references (1-cos, lower = more similar)",
    "dreamsim_src": "DreamSim distance to source (1-cos, lower = more similar)",
}


def axis_name(metric: str | None, short: bool = False) -> str:
    """The axis label of ``metric``; a DreamSim metric is named as the distance it is."""
    names = SHORT_AXIS if short else AXIS_NAMES
    if not metric:
        return "image" if short else "image alignment"
    if metric in names:
        return names[metric]
    if lower_is_better(metric):
        return f"{metric} (distance, lower = more similar)"
    return metric


@dataclass
class Point:
    label: str
    x: float
    y: float
    xerr: float
    yerr: float
    pareto: bool
    is_baseline: bool


@dataclass
class PlotInfo:
    """What a rendered plot shows; tests and the TUI read it instead of parsing pixels."""

    x_metric: str
    y_metric: str | None
    points: list[Point] = field(default_factory=list)
    width: int = 0
    height: int = 0

    @property
    def labels(self) -> list[str]:
        return [p.label for p in self.points]

    @property
    def sweep(self) -> list[Point]:
        return [p for p in self.points if not p.is_baseline]

    @property
    def baseline(self) -> Point | None:
        return next((p for p in self.points if p.is_baseline), None)

    @property
    def baselines(self) -> list[Point]:
        """One pooled baseline, or one per value when grouped by a base setting (seed, prompt...)."""
        return [p for p in self.points if p.is_baseline]


def _scale_note(rows, metric: str | None) -> str:
    scale = rows.scale_of(metric) if isinstance(rows, Aggregate) and metric else "raw"
    return "" if scale == "raw" else f" [{scale}]"


def _bar(sem: float) -> float:
    return 0.0 if math.isnan(sem) else sem


def tradeoff_points(
    rows: list[AggregateRow], x_metric: str = TEXT_METRIC, y_metric: str | None = None
) -> PlotInfo:
    """The points to draw: rows having both metrics, baseline included, in sweep order. Other
    axes than the table's (CLIP-T vs CLIP-I) get their own Pareto front, a distance such as
    DreamSim counting lower as better."""
    if (x_metric, y_metric or image_metric(rows)) != (TEXT_METRIC, image_metric(rows)):
        import copy

        rows = copy.deepcopy(list(rows))
        mark_pareto(rows, x_metric, y_metric)
    y_metric = y_metric or image_metric(rows)
    info = PlotInfo(x_metric, y_metric)
    for r in rows:
        x, y = r.metrics.get(x_metric), r.metrics.get(y_metric) if y_metric else None
        if x is None or y is None:
            continue
        # An undefined SEM (n = 1) draws no bar rather than failing or faking one.
        info.points.append(
            Point(r.label, x.mean, y.mean, _bar(x.sem), _bar(y.sem), r.pareto, r.is_baseline)
        )
    return info


def render_tradeoff_png(
    rows: list[AggregateRow],
    out: str | IO[bytes],
    by: str = "",
    title: str = "",
    size: tuple[float, float] = (7.0, 5.0),
    dpi: int = 100,
    x_metric: str = TEXT_METRIC,
    y_metric: str | None = None,
) -> PlotInfo:
    """Write the PNG to a path or binary file; returns what was drawn and the pixel size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    info = tradeoff_points(rows, x_metric, y_metric)
    # Figure() without pyplot: no global state, safe from threads and from the TUI process.
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    sweep = info.sweep
    if sweep:
        ax.errorbar(
            [p.x for p in sweep],
            [p.y for p in sweep],
            xerr=[p.xerr for p in sweep],
            yerr=[p.yerr for p in sweep],
            fmt="-o",
            color="tab:blue",
            ecolor="tab:gray",
            capsize=3,
            label=by or "sweep",
        )
        front = [p for p in sweep if p.pareto]
        ax.scatter(
            [p.x for p in front],
            [p.y for p in front],
            s=160,
            facecolors="none",
            edgecolors="tab:red",
            linewidths=1.5,
            label="Pareto front",
            zorder=3,
        )
        for p in sweep:
            ax.annotate(
                safe_text(p.label),
                (p.x, p.y),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=8,
            )
    for i, base in enumerate(info.baselines):
        ax.errorbar(
            [base.x],
            [base.y],
            xerr=[base.xerr],
            yerr=[base.yerr],
            fmt="s",
            color="black",
            capsize=3,
            label="baseline (no control)" if i == 0 else None,
        )
        ax.annotate(
            safe_text(base.label),
            (base.x, base.y),
            textcoords="offset points",
            xytext=(5, -12),
            fontsize=8,
        )
    if not info.points:
        ax.text(0.5, 0.5, "no scored runs yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(axis_name(info.x_metric) + _scale_note(rows, info.x_metric))
    ax.set_ylabel(axis_name(info.y_metric) + _scale_note(rows, info.y_metric))
    if isinstance(rows, Aggregate) and rows.unit_text:
        # Error bars mean different things per unit; the figure carries its own definition.
        fig.text(
            0.01, 0.005, f"error bars: SEM; {rows.unit_text}", fontsize=6, ha="left", va="bottom"
        )
    if title:
        ax.set_title(safe_text(title), fontsize=10)
    if info.points:
        ax.legend(fontsize=8, loc="best")
    ax.grid(True, alpha=0.3)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out, format="png", dpi=dpi)
    info.width, info.height = int(round(size[0] * dpi)), int(round(size[1] * dpi))
    return info


SHORT_AXIS = {
    "clip_t": "CLIP-T (text)",
    "clip_i_ref": "CLIP-I ref (image)",
    "clip_i_src": "CLIP-I src (image)",
    "dreamsim_ref": "DreamSim ref (distance, lower = closer)",
    "dreamsim_src": "DreamSim src (distance, lower = closer)",
}
TERMINAL_KEY = "o sweep  * Pareto  x baseline"


def draw_tradeoff(plt: Any, rows: list[AggregateRow], by: str = "", title: str = "") -> PlotInfo:
    """Draw into a plotext-compatible ``plt`` (the plotext module, or textual-plotext's
    ``PlotextPlot.plt``); the caller clears it first and shows/refreshes it after.

    No plotext legend: it sits in a corner over the data; the key goes in the title instead.
    """
    info = tradeoff_points(rows)
    xs_all, ys_all = [p.x for p in info.points], [p.y for p in info.points]
    mid = (min(xs_all) + max(xs_all)) / 2 if xs_all else 0.0
    lift = (max(ys_all) - min(ys_all)) * 0.06 if ys_all else 0.0  # one text row above the marker

    def label(text: str, x: float, y: float, color: str | None = None) -> None:
        # Labels right of centre grow leftwards so they are not cut at the frame. A label may be
        # a prompt, and the plot is drawn in a terminal: shown safe.
        plt.text(
            safe_text(text), x, y + lift, color=color, alignment="right" if x > mid else "left"
        )

    sweep = info.sweep
    if sweep:
        xs, ys = [p.x for p in sweep], [p.y for p in sweep]
        plt.error(xs, ys, xerr=[p.xerr for p in sweep], yerr=[p.yerr for p in sweep], color="gray")
        plt.plot(xs, ys, marker="dot", color="blue")
        front = [p for p in sweep if p.pareto]
        if front:
            plt.scatter([p.x for p in front], [p.y for p in front], marker="*", color="red")
        for p in sweep:
            label(p.label, p.x, p.y, "blue")
    for base in info.baselines:
        plt.scatter([base.x], [base.y], marker="x")
        label(base.label, base.x, base.y)
    plt.xlabel(axis_name(info.x_metric, short=True))
    plt.ylabel(axis_name(info.y_metric, short=True))
    plt.title(safe_text(f"{title}   {TERMINAL_KEY}" if title else TERMINAL_KEY))
    return info


def tradeoff_text(
    rows: list[AggregateRow],
    by: str = "",
    title: str = "",
    width: int = 80,
    height: int = 24,
    color: bool = False,
) -> str:
    """The terminal version as a string (for ``mtp export plot --text`` and logs)."""
    import plotext

    plotext.clear_figure()
    plotext.plotsize(width, height)
    if not color:
        plotext.theme("clear")
    draw_tradeoff(plotext, rows, by=by, title=title)
    text = plotext.build()
    plotext.clear_figure()
    return text if color else plotext.uncolorize(text)
