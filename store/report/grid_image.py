"""An annotated image grid of an experiment (PIL only), A1111 X/Y/Z style.

``grid_plan`` decides which run fills which cell (axes, pins, seeds, baselines, sources); this
module draws it: a caption naming the axes and the pinned values, then one panel per Z value
with X across and Y down. Cells without an image are drawn as labelled "no image" boxes and
counted in the caption. Caps on the number of cells and on the pixel size keep a 10k-run sweep
from producing a gigabyte PNG: thumbnails shrink first, then rows/columns/panels past the cap
are left out (and the caption says so).
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from store.db import Store
from store.safe_text import safe_text

from .grid_plan import CONTROL_AXES, GridPlan, canonical_axis, plan_grid

MAX_CELLS = 400
MAX_SIDE = 4096  # 4096^2 RGB is 50 MB in memory; the PNG is far smaller
THUMB = 256
MIN_THUMB = 32
PAD = 4
BG = (255, 255, 255)
MISSING = (225, 225, 225)
WARN = (160, 0, 0)
MISSING_SLOT = "{images}"  # the caption line that will count the cells with and without an image


@dataclass
class Cell:
    row: int
    col: int  # 0 is the source column when sources are shown per row
    run_id: int | None
    box: tuple[int, int, int, int]
    has_image: bool
    panel: int = 0
    kind: str = "target"  # target | baseline | source | blank
    reason: str = ""  # why it has no image ("cancelled", "no source", ...), as drawn in it


@dataclass
class GridLayout:
    image: Any  # PIL.Image
    by: str  # the Y axis (rows)
    columns: str  # the X axis
    row_labels: list[str]
    col_labels: list[str]  # "source" first when sources are shown per row
    thumb: int
    cells: list[Cell] = field(default_factory=list)
    truncated_rows: int = 0
    truncated_cols: int = 0
    z: str | None = None
    panel_titles: list[str] = field(default_factory=list)
    truncated_panels: int = 0
    pins: dict[str, str] = field(default_factory=dict)  # axis -> pinned value as printed
    caption: list[str] = field(default_factory=list)  # the lines printed above the grid
    # reason -> runs without an image (each run once, however many cells show it), plus cells
    # no run fits
    missing: Counter = field(default_factory=Counter)
    missing_runs: set = field(default_factory=set)
    pin_choices: dict[str, list[str]] = field(default_factory=dict)  # pinnable axis -> its values
    axes: list[str] = field(default_factory=list)  # every axis the experiment varies
    files: list[Any] = field(default_factory=list)  # the image files read to draw it (cache checks)

    @property
    def n_images(self) -> int:
        return sum(c.has_image for c in self.cells)

    @property
    def n_missing(self) -> int:
        return sum(self.missing.values())

    @property
    def caption_text(self) -> str:
        return "\n".join(self.caption)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _text_width(draw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def _load_thumb(path, size: int):
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = size / max(im.width, im.height)
            # Small images (the demo's 64 px) are enlarged to fill the cell; nearest keeps
            # their pixels honest instead of inventing detail.
            resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
            return im.resize(
                (max(1, round(im.width * scale)), max(1, round(im.height * scale))), resample
            )
    except (OSError, ValueError):
        return None


def _missing_reason(run: dict | None) -> str:
    if run is None:
        return "no run"
    return "image unreadable" if run["status"] == "done" else run["status"]


def render_grid(
    store: Store,
    experiment_id: int,
    by: str,
    columns: str | None = None,
    max_cells: int = MAX_CELLS,
    max_side: int = MAX_SIDE,
    thumb: int = THUMB,
    *,
    x: str | None = None,
    z: str | None = None,
    pins: Mapping[str, Any] | None = None,
    seeds: str | int | None = None,
) -> GridLayout:
    """Rows = values of ``by`` (the Y axis), columns = values of ``x`` (``columns`` is its older
    name), one panel per value of ``z``; every other varied axis pinned (``pins`` or defaults)."""
    from PIL import Image, ImageDraw

    if columns and x and canonical_axis(columns) != canonical_axis(x):
        from store.queries import InputError

        raise InputError(f"grid: columns={columns!r} and x={x!r} disagree; give one")
    plan = plan_grid(store, experiment_id, by, x=x or columns, z=z, pins=pins, seeds=seeds)
    if plan is None:
        return _empty(by, x or columns or "seed")

    col_side = plan.source_mode == "column"
    row_side = plan.source_mode == "row"
    n_panels = len(plan.panels)
    keep_cols = max(1, min(len(plan.col_keys), max_cells - 1))
    keep_panels = max(1, min(n_panels, max_cells // (keep_cols + 1)))
    keep_rows = max(1, min(len(plan.row_keys), max_cells // ((keep_cols + 1) * keep_panels)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = thumb
    while True:
        rows, cols, panels = (
            plan.row_keys[:keep_rows],
            plan.col_keys[:keep_cols],
            plan.panels[:keep_panels],
        )
        # Labels, titles and caption lines carry prompts and names: shown safe (store.safe_text)
        # on the image and wherever the caption is printed (CLI, the results screen).
        row_labels = (["source"] if row_side else []) + [safe_text(plan.row_label(k)) for k in rows]
        col_labels = (["source"] if col_side else []) + [safe_text(plan.col_label(k)) for k in cols]
        font = _font(max(9, min(18, size // 14)))
        line_h = font.size + 2 if hasattr(font, "size") else 12
        char_w = max(1, _text_width(probe, "n", font))
        # Row labels such as "final_step=10, seed 2" must stay readable next to small thumbnails.
        left = min(
            max((_text_width(probe, t, font) for t in row_labels), default=0) + 2 * PAD,
            max(size, 40 * char_w),
        )
        wrapped = [textwrap.wrap(t, max(8, size // char_w))[:3] or [""] for t in col_labels]
        header_h = max(len(w) for w in wrapped) * line_h + 2 * PAD
        title_h = line_h + PAD if plan.z else 0
        grid_w = left + len(col_labels) * (size + PAD) + PAD
        body_h = len(row_labels) * (size + PAD) + PAD
        notes = _notes(
            plan,
            len(plan.row_keys) - len(rows),
            len(plan.col_keys) - len(cols),
            n_panels - len(panels),
        )
        # A narrow grid still gets a caption readable in lines of ~60 characters.
        width = min(max(grid_w, 60 * char_w + 2 * PAD), max(max_side, grid_w))
        caption = [
            (line, colour, text)
            for text, colour in plan_lines(plan, notes)
            for line in (
                textwrap.wrap(text, max(20, (width - 2 * PAD) // char_w)) or [""]
                if text != MISSING_SLOT
                else [text]
            )
        ]
        caption_h = len(caption) * line_h + 2 * PAD
        height = caption_h + len(panels) * (title_h + header_h + body_h)
        if width <= max_side and height <= max_side:
            break
        if size > MIN_THUMB:
            # Shrink thumbnails first: every cell stays visible.
            size = max(MIN_THUMB, int(size * min(max_side / width, max_side / height) * 0.98))
            continue
        # At the smallest thumbnail, leave out the panels/rows/columns that do not fit.
        fit_c = max(1, (max_side - left - PAD) // (size + PAD) - col_side)
        room = (max_side - caption_h) // len(panels) - title_h - header_h - PAD
        fit_r = room // (size + PAD) - row_side
        if fit_r < 1 and keep_panels > 1:
            keep_panels -= 1
            continue
        fit_r = max(1, fit_r)
        if fit_c >= keep_cols and fit_r >= keep_rows:
            break  # one cell wider than max_side: nothing more to drop
        keep_cols, keep_rows = min(keep_cols, fit_c), min(keep_rows, fit_r)

    sheet = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(sheet)
    layout = GridLayout(
        sheet,
        plan.y.name,
        plan.x.name,
        row_labels,
        col_labels,
        size,
        truncated_rows=len(plan.row_keys) - len(rows),
        truncated_cols=len(plan.col_keys) - len(cols),
        z=plan.z.name if plan.z else None,
        panel_titles=[safe_text(p.title) for p in panels],
        truncated_panels=n_panels - len(panels),
        pins={a: plan.axes[a].label(k) for a, k in plan.pins.items()},
        pin_choices={
            a: [plan.axes[a].label(v) for v in plan.axes[a].values]
            for a in plan.swept
            if a not in (plan.x.name, plan.y.name, plan.z.name if plan.z else None)
        },
        axes=list(plan.swept),
    )
    top = PAD + len(caption) * line_h + PAD
    for p_index, panel in enumerate(panels):
        if plan.z:
            draw.text((PAD, top), safe_text(panel.title), fill=(0, 0, 0), font=font)
            top += title_h
        for c, lines in enumerate(wrapped):
            for i, line in enumerate(lines):
                draw.text(
                    (left + c * (size + PAD), top + PAD + i * line_h),
                    line,
                    fill=(0, 0, 0),
                    font=font,
                )
        top += header_h
        for r, label in enumerate(row_labels):
            y = top + r * (size + PAD)
            while _text_width(draw, label, font) > left - 2 * PAD and len(label) > 4:
                label = label[:-2] + "…"
            draw.text((PAD, y + size // 2 - line_h // 2), label, fill=(0, 0, 0), font=font)
            for c in range(len(col_labels)):
                box = (left + c * (size + PAD), y, left + c * (size + PAD) + size, y + size)
                run, kind, rel = _cell(plan, panel, rows, cols, r, c, col_side, row_side)
                _draw_cell(
                    store, sheet, draw, layout, box, run, kind, rel, font, line_h, p_index, r, c
                )
        top += body_h
    # The image count is known only after drawing; its line (never wrapped) was reserved by _notes.
    shown = sum(c.kind in ("target", "baseline") for c in layout.cells)
    have = sum(c.kind in ("target", "baseline") and c.has_image for c in layout.cells)
    counts = ", ".join(f"{reason} {n}" for reason, n in sorted(layout.missing.items()))
    repeated = shown - have > layout.n_missing
    status = f"{have} of {shown} cells have an image" + (
        f"; {layout.n_missing} cells without image ({counts})"
        + ("; a run shown in several panels counted once" if repeated else "")
        if layout.missing
        else ""
    )
    drawn = [
        (status, WARN if layout.missing else (0, 0, 0), status)
        if text == MISSING_SLOT
        else (line, colour, text)
        for line, colour, text in caption
    ]
    for i, (line, colour, _) in enumerate(drawn):
        draw.text((PAD, PAD + i * line_h), line, fill=colour, font=font)
    layout.caption = list(dict.fromkeys(text for _, _, text in drawn))
    return layout


def plan_lines(plan: GridPlan, notes: list[str]) -> list[tuple[str, tuple[int, int, int]]]:
    return [(safe_text(t), (0, 0, 0)) for t in plan.caption()] + [
        (safe_text(t), WARN) for t in notes
    ]


def _notes(plan: GridPlan, rows: int, cols: int, panels: int) -> list[str]:
    notes = [MISSING_SLOT]  # the missing-image count, filled in after drawing
    if rows or cols or panels:
        notes.append(
            f"+{rows} rows, +{cols} columns"
            + (f", +{panels} panels" if panels else "")
            + " not shown"
        )
    return notes


def _cell(plan: GridPlan, panel, rows, cols, r: int, c: int, col_side: bool, row_side: bool):
    """(run, kind, image path) for the cell at display row r, column c."""
    if col_side and c == 0:
        run = panel.sources.get(rows[r - row_side]) if not (row_side and r == 0) else None
        return run, "source", run["source_image_path"] if run else None
    if row_side and r == 0:
        run = panel.sources.get(cols[c - col_side])
        return run, "source", run["source_image_path"] if run else None
    row, col = rows[r - row_side], cols[c - col_side]
    run = panel.cells.get((row, col))
    kind = "baseline" if row[0] == "baseline" or col[0] == "baseline" else "target"
    if (
        run is None
        and plan.x.name in CONTROL_AXES
        and (row[0] == "baseline") != (col[0] == "baseline")
    ):
        # both axes are control settings: the baseline has its own row and column and meets
        # them in one cell; the rest of that row and column means nothing
        return None, "blank", None
    return run, kind, run["image_path"] if run else None


def _draw_cell(store, sheet, draw, layout, box, run, kind, rel, font, line_h, panel, r, c) -> None:
    from PIL import Image, ImageDraw

    x0, y0, x1, y1 = box
    size = x1 - x0
    path = store.home.resolve_artifact(rel) if rel else None
    if path is not None:
        layout.files.append(path)
    im = _load_thumb(path, size) if rel else None
    reason = ""
    if im is not None:
        sheet.paste(im, (x0 + (size - im.width) // 2, y0 + (size - im.height) // 2))
    elif kind != "blank":
        # Drawn on a cell-sized tile so labels are clipped to their cell.
        tile = Image.new("RGB", (size, size), MISSING)
        text = ImageDraw.Draw(tile)
        reason = "no source" if kind == "source" and run is None else _missing_reason(run)
        if size >= 32:  # smaller cells are too small to read; the caption still counts them
            text.text((PAD, PAD), "no image", fill=(90, 90, 90), font=font)
        if size >= 64:
            text.text((PAD, PAD + line_h), reason, fill=(90, 90, 90), font=font)
        sheet.paste(tile, (x0, y0))
        # A run drawn more than once (a baseline repeated in every Z panel) is one missing run.
        if kind != "source" and (run is None or run["id"] not in layout.missing_runs):
            layout.missing[reason] += 1
            if run is not None:
                layout.missing_runs.add(run["id"])
    layout.cells.append(
        Cell(r, c, run["id"] if run else None, box, im is not None, panel, kind, reason)
    )


def _empty(by: str, columns: str) -> GridLayout:
    from PIL import Image, ImageDraw

    sheet = Image.new("RGB", (320, 40), BG)
    ImageDraw.Draw(sheet).text(
        (PAD, PAD), "no runs in this experiment", fill=(0, 0, 0), font=_font(12)
    )
    return GridLayout(sheet, by, columns, [], [], 0, caption=["no runs in this experiment"])
