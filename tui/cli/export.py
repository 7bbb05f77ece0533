"""`mtp export runs | summary | plot | grid`: an experiment's results as CSV and PNG files.

A relative output path is taken inside the current directory and may not leave it; without
one, the file goes to the data folder's exports/ under a name made from the experiment.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from store.report.aggregate import CELL_MODES, SCALES

from .out import echo


def register(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export", help="export runs, summaries, plots and image grids"
    ).add_subparsers(dest="export_cmd", metavar="WHAT")

    def common(p: argparse.ArgumentParser, by: bool) -> None:
        p.add_argument("experiment", help="experiment id or name")
        if by:
            p.add_argument("--by", required=True, help="the swept parameter, e.g. final_step")

    p = export.add_parser(
        "runs", help="every run with its parameters, status, timings and scores (CSV)"
    )
    common(p, by=False)
    p.add_argument(
        "--csv", help="output file (default: exports/<experiment>-runs.csv in the data folder)"
    )
    p.add_argument(
        "--scale",
        choices=SCALES,
        default="raw",
        help="raw cosine, 100*cos (torchmetrics), or clipscore = 2.5*max(cos,0) on text alignment only",
    )
    p.set_defaults(func=cmd_runs)

    p = export.add_parser(
        "summary", help="n, mean, std and SEM of every metric per parameter value (CSV)"
    )
    common(p, by=True)
    p.add_argument("--csv", help="output file")
    p.add_argument(
        "--scale",
        choices=SCALES,
        default="raw",
        help="raw cosine, 100*cos, or clipscore = 2.5*max(cos,0) on text alignment only",
    )
    cells_and_versus(p)
    p.set_defaults(func=cmd_summary)

    p = export.add_parser("plot", help="text vs image alignment trade-off plot (PNG)")
    common(p, by=True)
    p.add_argument("--png", help="output file")
    p.add_argument("--scale", choices=SCALES, default="raw")
    p.add_argument("--text", action="store_true", help="also print the plot in the terminal")
    cells_and_versus(p, versus=False)
    p.set_defaults(func=cmd_plot)

    p = export.add_parser(
        "grid",
        help="annotated image grid: rows = --y values, columns = --x values, one panel "
        "per --z value, every other swept axis pinned (PNG)",
    )
    p.add_argument("experiment", help="experiment id or name")
    p.add_argument("--y", "--by", dest="by", required=True, help="rows, e.g. layers")
    p.add_argument(
        "--x", "--columns", dest="x", help="columns (default: prompts when several, else seeds)"
    )
    p.add_argument("--z", help="one panel per value of this axis, e.g. start_step")
    p.add_argument(
        "--pin",
        action="append",
        default=[],
        metavar="AXIS=VALUE",
        help="hold an axis at a value, e.g. --pin seed=1 --pin mask_threshold=0.2 "
        "(unpinned axes take the first run's value; all pins are printed on the grid)",
    )
    p.add_argument(
        "--seeds", metavar="each|SEED", help="'each': one row per seed; a number: that seed"
    )
    p.add_argument("--png", help="output file")
    p.add_argument("--max-cells", type=int, default=400)
    p.add_argument("--thumb", type=int, default=256, help="thumbnail size in pixels")
    p.set_defaults(func=cmd_grid)


def cells_and_versus(p: argparse.ArgumentParser, versus: bool = True) -> None:
    p.add_argument(
        "--cells",
        choices=CELL_MODES,
        default="common",
        help="common: compare rows over the (prompt, seed) cells complete in every row (default; "
        "dropped cells are reported); all: every scored run, rows lacking planned runs flagged",
    )
    if not versus:
        return
    p.add_argument(
        "--versus",
        metavar="VALUE",
        help="the paired column's reference: this value of --by (default: the baseline)",
    )


def _experiment(store, ref):
    from store.queries import InputError, experiment_by_ref

    exp = experiment_by_ref(store, ref)
    if exp is None:
        raise InputError(f"experiment {ref!r} does not exist")
    return exp


def _where(store, exp, given: str | None, kind: str, suffix: str, by: str | None = None):
    """(path, folder) for the export functions: the user's path inside cwd, or a default name."""
    from store.report.export import default_name

    if given:
        # An absolute path on the command line is the user's own choice of folder.
        return given, Path(given).expanduser().parent if Path(
            given
        ).expanduser().is_absolute() else Path.cwd()
    return default_name(store, exp.id, kind, suffix, by), store.home.exports


def cmd_runs(args, store) -> int:
    from store.report.export import export_runs_csv

    exp = _experiment(store, args.experiment)
    path, folder = _where(store, exp, args.csv, "runs", ".csv")
    echo(export_runs_csv(store, exp.id, path, scale=args.scale, folder=folder))
    return 0


def cmd_summary(args, store) -> int:
    from store.report.aggregate import aggregate, check_by
    from store.report.export import export_summary_csv

    exp = _experiment(store, args.experiment)
    check_by(args.by)
    path, folder = _where(store, exp, args.csv, "summary", ".csv", args.by)
    rows = aggregate(store, exp.id, args.by, scale=args.scale, cells=args.cells, versus=args.versus)
    echo(
        export_summary_csv(store, exp.id, args.by, path, scale=args.scale, folder=folder, rows=rows)
    )
    # What the numbers mean goes to stderr: stdout stays the path, for scripts.
    for line in rows.describe():
        echo(line, file=sys.stderr)
    for r in rows:
        if r.incomplete:
            echo(f"warning: {r.label}: missing {r.incomplete}", file=sys.stderr)
        elif r.lacking:
            echo(f"note: {r.label}: lacks {r.lacking} (its cells were dropped)", file=sys.stderr)
    return 0


def cmd_plot(args, store) -> int:
    from store.report.export import export_plot_png

    exp = _experiment(store, args.experiment)
    path, folder = _where(store, exp, args.png, "plot", ".png", args.by)
    out = export_plot_png(
        store, exp.id, args.by, path, scale=args.scale, folder=folder, cells=args.cells
    )
    if args.text:
        from store.report.aggregate import aggregate
        from store.report.plots import tradeoff_text

        echo(
            tradeoff_text(
                aggregate(store, exp.id, args.by, scale=args.scale, cells=args.cells),
                by=args.by,
                title=f"{exp.name} by {args.by}",
            )
        )
    echo(out)
    return 0


def parse_pins(given: list[str]) -> dict[str, str]:
    from store.queries import InputError

    pins: dict[str, str] = {}
    for item in given:
        axis, sep, value = item.partition("=")
        if not sep or not axis.strip():
            raise InputError(f"--pin: {item!r} is not AXIS=VALUE (e.g. seed=1)")
        if axis.strip() in pins:
            raise InputError(f"--pin: {axis.strip()} is pinned twice")
        pins[axis.strip()] = value.strip()
    return pins


def cmd_grid(args, store) -> int:
    from store.report.export import export_grid_png

    exp = _experiment(store, args.experiment)
    pins = parse_pins(args.pin)
    path, folder = _where(store, exp, args.png, "grid", ".png", args.by)
    layouts = []
    echo(
        export_grid_png(
            store,
            exp.id,
            args.by,
            path,
            folder=folder,
            x=args.x,
            z=args.z,
            pins=pins,
            seeds=args.seeds,
            max_cells=args.max_cells,
            thumb=args.thumb,
            on_layout=layouts.append,
        )
    )
    # The caption printed on the grid, repeated here: what was pinned, what is missing.
    for line in layouts[0].caption if layouts else []:
        echo(line, file=sys.stderr)
    missing = _missing_images(store, exp.id)
    if missing:
        echo(
            f"mtp: warning: {len(missing)} done run(s) have no image file under {store.home.root} "
            f"(e.g. run {missing[0]}); their cells are grey. Is this the data folder the engines write to?",
            file=sys.stderr,
        )
    return 0


def _missing_images(store, experiment_id: int) -> list[int]:
    """Done runs whose target image is not in this data folder (an engine wrote elsewhere)."""
    from sqlmodel import select

    from store.models import Run, RunStatus

    with store.session() as s:
        rows = s.exec(
            select(Run.id, Run.image_path).where(
                Run.experiment_id == experiment_id, Run.status == RunStatus.DONE
            )
        ).all()
    return [rid for rid, rel in rows if not (rel and store.home.resolve_artifact(rel).is_file())]
