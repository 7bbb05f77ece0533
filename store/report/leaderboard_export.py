"""A study's leaderboard as files: CSV, a LaTeX table (booktabs), a PNG plot, the runs CSV it
is recomputable from, and a labelled grid of one configuration's images per unit."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from ..db import Store
from ..safe_text import safe_text
from .aggregate import lower_is_better
from .export import _atomic, _csv_text, _target, free_name
from .leaderboard import CONFIG_COLUMNS, BoardRow, Leaderboard, run_table
from .leaderboard_stats import separates


def default_study_name(store: Store, study: str, kind: str, suffix: str, folder=None) -> str:
    """`<study>-<kind><suffix>`, `-2`, `-3`... when taken (an export never overwrites one)."""
    return free_name(store, f"{study}-{kind}", suffix, folder)


def _num(v: float) -> float | str:
    return "" if v is None or not math.isfinite(v) else round(float(v), 6)


def board_header(board: Leaderboard) -> list[str]:
    head = ["rank", "configuration", "method", "baseline", "reference", "pareto", "runs"]
    for m in board.metrics:
        head += [f"{m}_mean", f"{m}_low", f"{m}_high", f"{m}_n_{board.unit_word}s"]
        head += [f"{m}_diff", f"{m}_diff_low", f"{m}_diff_high", f"{m}_p", f"{m}_p_holm"]
    for g in board.groups:
        for m in board.metrics:
            head += [f"{g}:{m}_mean", f"{g}:{m}_n"]
    return head


def board_rows(board: Leaderboard) -> list[list]:
    out = []
    for i, row in enumerate(board.rows):
        line: list = [
            i + 1,
            row.label,
            row.method,
            int(row.is_baseline),
            int(row.is_reference),
            int(row.pareto),
            row.runs,
        ]
        for m in board.metrics:
            st = row.stats.get(m)
            line += [_num(st.mean), _num(st.low), _num(st.high), st.n] if st else ["", "", "", 0]
            pr = row.paired.get(m)
            if pr is not None:
                line += [_num(pr.mean_diff), _num(pr.low), _num(pr.high), _num(pr.p)]
                line += [_num(row.p_holm.get(m, float("nan")))]
            else:
                line += ["", "", "", "", ""]
        for g in board.groups:
            for m in board.metrics:
                mean, n = row.groups.get(g, {}).get(m, (float("nan"), 0))
                line += [_num(mean), n]
        out.append(line)
    return out


def export_board_csv(
    store: Store, board: Leaderboard, path: str | os.PathLike, folder=None
) -> Path:
    target = _target(store, path, ".csv", folder)
    with _atomic(target) as fh:
        w = csv.writer(fh)
        w.writerow([_csv_text(h) for h in board_header(board)])
        w.writerows([_csv_text(v) for v in line] for line in board_rows(board))
    return target


def export_study_runs_csv(
    store: Store, study_id: int, path: str | os.PathLike, folder=None
) -> Path:
    """Every run of the study: unit, group, configuration, prompt, seed, status, the
    configuration's columns and each metric's score (the backbone the leaderboard uses)."""
    rows = run_table(store, study_id)
    metrics = sorted({k for r in rows for k in r} - _RUN_FIXED)
    head = list(_RUN_HEAD) + list(CONFIG_COLUMNS) + metrics
    target = _target(store, path, ".csv", folder)
    with _atomic(target) as fh:
        w = csv.writer(fh)
        w.writerow(head)
        for r in rows:
            w.writerow([_csv_text("" if r.get(h) is None else r.get(h)) for h in head])
    return target


_RUN_HEAD = ("run_id", "unit", "group", "configuration", "prompt_index", "seed", "status")
_RUN_FIXED = set(_RUN_HEAD) | set(CONFIG_COLUMNS)


# ---------------------------------------------------------------------------- LaTeX
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in safe_text(text))


def bold_rows(board: Leaderboard, metric: str) -> set[int]:
    """The best row of a column, only when its interval separates it from every other row's."""
    higher = not lower_is_better(metric)
    scored = [
        (i, r.stats[metric])
        for i, r in enumerate(board.rows)
        if metric in r.stats and math.isfinite(r.stats[metric].mean)
    ]
    if len(scored) < 2:
        return set()
    best_i, best = max(scored, key=lambda t: t[1].mean if higher else -t[1].mean)
    for i, st in scored:
        if i != best_i and not separates(best.low, best.high, st.low, st.high, higher):
            return set()
    return {best_i}


def _cell(row: BoardRow, metric: str, bold: bool) -> str:
    st = row.stats.get(metric)
    if st is None or not math.isfinite(st.mean):
        return "--"
    text = f"{st.mean:.3f}"
    if bold:
        text = rf"\textbf{{{text}}}"
    if math.isfinite(st.low):
        text += rf" {{\scriptsize [{st.low:.3f}, {st.high:.3f}]}}"
    return text


def board_latex(board: Leaderboard) -> str:
    """A booktabs table: mean [95% interval] per metric, the paired difference of the first
    consistency metric to the reference with its Holm-adjusted p."""
    metrics = board.metrics
    diff_metric = board.consistency_metric or (metrics[0] if metrics else None)
    bolds = {m: bold_rows(board, m) for m in metrics}
    cols = "l" + "c" * len(metrics) + ("cc" if diff_metric else "")
    arrows = {m: (r"$\downarrow$" if lower_is_better(m) else r"$\uparrow$") for m in metrics}
    head = ["Configuration"] + [f"{latex_escape(m)} {arrows[m]}" for m in metrics]
    if diff_metric:
        head += [rf"$\Delta$ {latex_escape(diff_metric)}", r"$p_\mathrm{Holm}$"]
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        " & ".join(head) + r" \\",
        r"\midrule",
    ]
    for i, row in enumerate(board.rows):
        cells = [latex_escape(row.label) + (" (ref.)" if row.is_reference else "")]
        cells += [_cell(row, m, i in bolds[m]) for m in metrics]
        if diff_metric:
            pr = row.paired.get(diff_metric)
            if pr is None or not math.isfinite(pr.mean_diff):
                cells += ["--", "--"]
            else:
                ci = (
                    rf" {{\scriptsize [{pr.low:+.3f}, {pr.high:+.3f}]}}"
                    if math.isfinite(pr.low)
                    else ""
                )
                cells += [f"{pr.mean_diff:+.3f}{ci}", _p_text(row.p_holm.get(diff_metric))]
        lines.append(" & ".join(cells) + r" \\")
    n_units = len(board.units)
    caption = (
        f"{latex_escape(board.study)} on {latex_escape(board.suite)}: mean over "
        f"{n_units} {board.unit_word}s (prompts and seeds averaged within each {board.unit_word}) "
        f"with {latex_escape(board.interval_text)}; $\\Delta$: paired difference to the reference "
        f"over the {board.unit_word}s both have; $p$: {latex_escape(board.test_text)}. "
        "Bold: best, only where its interval separates it from every other row's."
    )
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{{caption}}}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def _p_text(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "--"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def export_board_latex(
    store: Store, board: Leaderboard, path: str | os.PathLike, folder=None
) -> Path:
    target = _target(store, path, ".tex", folder)
    with _atomic(target) as fh:
        fh.write(board_latex(board))
    return target


# ---------------------------------------------------------------------------- plot
def render_board_png(board: Leaderboard, out, size=(7.0, 5.0), dpi: int = 100) -> None:
    """Text alignment against consistency, 95% intervals as error bars, the Pareto front
    joined; configurations without both metrics are left out (and named in the title)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x_m, y_m = "clip_t", board.consistency_metric
    drawn, missing = [], 0
    for row in board.rows:
        xs, ys = row.stats.get(x_m), row.stats.get(y_m) if y_m else None
        if xs is None or ys is None or not (math.isfinite(xs.mean) and math.isfinite(ys.mean)):
            missing += 1
            continue
        drawn.append((row, xs, ys))
        xerr = [[xs.mean - xs.low], [xs.high - xs.mean]] if math.isfinite(xs.low) else None
        yerr = [[ys.mean - ys.low], [ys.high - ys.mean]] if math.isfinite(ys.low) else None
        ax.errorbar(
            xs.mean,
            ys.mean,
            xerr=xerr,
            yerr=yerr,
            fmt="o" if row.pareto else "s",
            capsize=3,
            label=safe_text(row.label)[:60],
        )
    front = sorted((xs.mean, ys.mean) for row, xs, ys in drawn if row.pareto)
    if len(front) > 1:
        ax.plot(
            [p[0] for p in front], [p[1] for p in front], "k--", linewidth=1, label="Pareto front"
        )
    ax.set_xlabel(f"{x_m} (higher is better)")
    if y_m:
        ax.set_ylabel(f"{y_m} ({'lower' if lower_is_better(y_m) else 'higher'} is better)")
    title = (
        f"{safe_text(board.study)}: mean over {len(board.units)} {board.unit_word}s, 95% bootstrap"
    )
    if missing:
        title += f"\n({missing} configuration(s) without both metrics not drawn)"
    ax.set_title(title, fontsize=9)
    if drawn:
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(out, format="png")


def export_board_png(
    store: Store, board: Leaderboard, path: str | os.PathLike, folder=None
) -> Path:
    target = _target(store, path, ".png", folder)
    with _atomic(target, "wb") as fh:
        render_board_png(board, fh)
    return target


# ---------------------------------------------------------------------------- grid
MAX_GRID_UNITS = 24


def config_grid_cells(
    store: Store, study_id: int, board: Leaderboard, row: BoardRow, seed: int | None = None
) -> tuple[list[tuple[str, list[tuple[str, str | None]]]], int | None]:
    """(unit label, [(prompt, image path or None)]) per unit for one configuration and one seed
    (the lowest unless given), at most MAX_GRID_UNITS units; and the seed shown."""
    from sqlalchemy import select
    from sqlmodel import col

    from ..models import Experiment, Run, SuiteUnit

    # this configuration's runs only: its columns compared in SQL (NULL as IS NULL)
    same = [
        col(getattr(Run, c)).is_(None) if v is None else getattr(Run, c) == v
        for c, v in zip(CONFIG_COLUMNS, row.key)
    ]
    q = (
        select(
            SuiteUnit.position,
            SuiteUnit.name,
            SuiteUnit.group_name,
            Run.prompt_index,
            Run.target_prompt,
            Run.seed,
            Run.status,
            Run.image_path,
        )
        .join(Experiment, Experiment.id == Run.experiment_id)
        .join(SuiteUnit, SuiteUnit.id == Experiment.unit_id)
        .where(Experiment.study_id == study_id, *same)
    )
    found: dict[tuple, dict] = {}
    seeds: set[int] = set()
    with store.session() as s:
        for r in s.execute(q):
            seeds.add(r.seed)
            found[(r.position, r.seed, r.prompt_index)] = dict(r._mapping)
    shown = seed if seed is not None else (min(seeds) if seeds else None)
    units: dict[int, tuple[str, list[tuple[str, str | None]]]] = {}
    for (pos, sd, _pi), r in sorted(found.items()):
        if sd != shown:
            continue
        label = f"{r['name']} ({r['group_name']})" if r["group_name"] else r["name"]
        path = r["image_path"] if r["status"] == "done" and r["image_path"] else None
        units.setdefault(pos, (label, []))[1].append((r["target_prompt"], path))
    ordered = [units[p] for p in sorted(units)][:MAX_GRID_UNITS]
    return ordered, shown


def render_config_grid(
    store: Store, study_id: int, board: Leaderboard, row: BoardRow, out, cell: int = 128
) -> int | None:
    """One configuration's images: a row per unit, a column per prompt, labelled; returns the
    seed shown."""
    from PIL import Image, ImageDraw

    from .grid_image import _font, _load_thumb

    cells, seed = config_grid_cells(store, study_id, board, row)
    cols = max((len(c[1]) for c in cells), default=1)
    label_w, head_h, line_h = 200, 36, 14
    font = _font(11)
    width = label_w + cols * cell
    height = head_h + max(1, len(cells)) * (cell + line_h)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    title = f"{board.study}: {row.label} (seed {seed}); {len(cells)} of {len(board.units)} {board.unit_word}s"
    draw.text((4, 4), safe_text(title)[:160], fill=(0, 0, 0), font=font)
    for i, (label, images) in enumerate(cells):
        y = head_h + i * (cell + line_h)
        draw.text((4, y + cell // 2), safe_text(label)[:30], fill=(0, 0, 0), font=font)
        for j, (prompt, path) in enumerate(images):
            x = label_w + j * cell
            thumb = _load_thumb(store.home.resolve_artifact(path), cell - 4) if path else None
            if thumb is not None:
                sheet.paste(thumb, (x + 2, y + 2))
            else:
                draw.rectangle((x + 2, y + 2, x + cell - 2, y + cell - 2), outline=(180, 180, 180))
                draw.text((x + 8, y + cell // 2), "not done", fill=(120, 120, 120), font=font)
            draw.text(
                (x + 2, y + cell), safe_text(prompt)[: cell // 6], fill=(60, 60, 60), font=font
            )
    sheet.save(out, format="PNG")
    return seed


def export_config_grid(
    store: Store, study_id: int, board: Leaderboard, row: BoardRow, path, folder=None
) -> Path:
    target = _target(store, path, ".png", folder)
    with _atomic(target, "wb") as fh:
        render_config_grid(store, study_id, board, row, fh)
    return target


def export_study(
    store: Store, study_id: int, board: Leaderboard, folder=None, grid: BoardRow | None = None
) -> list[Path]:
    """Everything `mtp study export` and the screen's ctrl+s write: the leaderboard as CSV,
    LaTeX and PNG, the runs CSV, and ``grid``'s image grid when given; never over a file."""

    def name(kind: str, suffix: str) -> str:
        return default_study_name(store, board.study, kind, suffix, folder)

    made = [
        export_board_csv(store, board, name("leaderboard", ".csv"), folder),
        export_board_latex(store, board, name("leaderboard", ".tex"), folder),
        export_board_png(store, board, name("leaderboard", ".png"), folder),
        export_study_runs_csv(store, study_id, name("runs", ".csv"), folder),
    ]
    if grid is not None:
        made.append(export_config_grid(store, study_id, board, grid, name("grid", ".png"), folder))
    return made
