"""An annotated image grid of an experiment (PIL only).

Rows are the values of one parameter (baseline first), columns the prompts or the seeds, and
the first column the source image the row's targets attended to. Labels sit on the margins.
Caps on the number of cells and on the pixel size keep a 10k-run sweep from producing a
gigabyte PNG: thumbnails shrink first, then rows/columns past the cap are left out (and the
layout says so).
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from .aggregate import _fmt, check_by
from store.db import Store
from store.models import Run

MAX_CELLS = 400
MAX_SIDE = 4096  # 4096^2 RGB is 50 MB in memory; the PNG is far smaller
THUMB = 256
MIN_THUMB = 32
PAD = 4
BG = (255, 255, 255)
MISSING = (225, 225, 225)


@dataclass
class Cell:
    row: int
    col: int  # 0 is the source column
    run_id: int | None
    box: tuple[int, int, int, int]
    has_image: bool


@dataclass
class GridLayout:
    image: Any  # PIL.Image
    by: str
    columns: str
    row_labels: list[str]
    col_labels: list[str]  # first one is "source"
    thumb: int
    cells: list[Cell] = field(default_factory=list)
    truncated_rows: int = 0
    truncated_cols: int = 0

    @property
    def n_images(self) -> int:
        return sum(c.has_image for c in self.cells)


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
            return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), resample)
    except (OSError, ValueError):
        return None


def grid_runs(store: Store, experiment_id: int, by: str, columns: str | None = None):
    """(row keys, column keys, {(row, col): run}) choosing one run per cell in sweep order."""
    check_by(by)
    t = Run.__table__
    q = (select(t.c.id, t.c[by], t.c.is_baseline, t.c.prompt_index, t.c.target_prompt, t.c.seed,
                t.c.grid_index, t.c.status, t.c.image_path, t.c.source_image_path)
         .where(t.c.experiment_id == experiment_id).order_by(t.c.grid_index, t.c.id))
    with store.session() as s:
        runs = [r._asdict() for r in s.execute(q)]
    if not runs:
        return [], [], {}, "seed"
    prompts = {r["prompt_index"] for r in runs}
    columns = columns or ("target_prompt" if len(prompts) > 1 else "seed")
    if columns not in ("target_prompt", "seed"):
        from store.queries import InputError

        raise InputError(f"grid columns: {columns!r} is neither target_prompt nor seed")
    col_field = "prompt_index" if columns == "target_prompt" else "seed"
    fixed_field = "seed" if columns == "target_prompt" else "prompt_index"
    fixed = runs[0][fixed_field]  # the other of prompt/seed is held at its first value
    rows: dict[Any, None] = {}
    cols: dict[Any, str] = {}
    cells: dict[tuple, dict] = {}
    for r in sorted(runs, key=lambda r: (not r["is_baseline"], r["grid_index"])):
        if r[fixed_field] != fixed:
            continue
        row = ("baseline",) if r["is_baseline"] else ("value", r[by])
        col = r[col_field]
        rows.setdefault(row, None)
        cols.setdefault(col, r["target_prompt"] if columns == "target_prompt" else f"seed {r['seed']}")
        current = cells.get((row, col))
        if current is None or (not current["image_path"] and r["image_path"]):
            cells[(row, col)] = r
    return list(rows), list(cols.items()), cells, columns


def render_grid(store: Store, experiment_id: int, by: str, columns: str | None = None, max_cells: int = MAX_CELLS,
                max_side: int = MAX_SIDE, thumb: int = THUMB) -> GridLayout:
    from PIL import Image, ImageDraw

    row_keys, col_items, cells, columns = grid_runs(store, experiment_id, by, columns)
    keep_cols = max(1, min(len(col_items), max_cells - 1))
    keep_rows = max(1, min(len(row_keys), max_cells // (keep_cols + 1))) if row_keys else 0
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = thumb
    while True:
        layout_cols, layout_rows = col_items[:keep_cols], row_keys[:keep_rows]
        row_labels = ["baseline" if k[0] == "baseline" else f"{by}={_fmt(k[1])}" for k in layout_rows]
        col_labels = ["source"] + [label for _, label in layout_cols]
        n_c, n_r = len(col_labels), max(1, len(layout_rows))
        font = _font(max(9, min(18, size // 14)))
        line_h = font.size + 2 if hasattr(font, "size") else 12
        left = min(max((_text_width(probe, t, font) for t in row_labels), default=0) + 2 * PAD, max(size, 80))
        chars = max(8, size // max(1, _text_width(probe, "n", font)))
        wrapped = [textwrap.wrap(t, chars)[:3] or [""] for t in col_labels]
        top = max(len(w) for w in wrapped) * line_h + 2 * PAD
        width = left + n_c * (size + PAD) + PAD
        height = top + n_r * (size + PAD) + PAD
        if width <= max_side and height <= max_side:
            break
        if size > MIN_THUMB:
            # Shrink thumbnails first: every cell stays visible.
            size = max(MIN_THUMB, int(size * min(max_side / width, max_side / height) * 0.98))
            continue
        # At the smallest thumbnail, leave out the rows/columns that do not fit.
        fit_c = max(1, (max_side - left - PAD) // (size + PAD) - 1)
        fit_r = max(1, (max_side - top - PAD) // (size + PAD))
        if fit_c >= keep_cols and fit_r >= keep_rows:
            break  # one cell wider than max_side: nothing more to drop
        keep_cols, keep_rows = min(keep_cols, fit_c), min(keep_rows, fit_r) if row_keys else 0

    sheet = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(sheet)
    for c, lines in enumerate(wrapped):
        x = left + c * (size + PAD)
        for i, line in enumerate(lines):
            draw.text((x, PAD + i * line_h), line, fill=(0, 0, 0), font=font)
    layout = GridLayout(sheet, by, columns, row_labels, col_labels, size,
                        truncated_rows=len(row_keys) - len(layout_rows), truncated_cols=len(col_items) - len(layout_cols))
    for r, key in enumerate(layout_rows):
        y = top + r * (size + PAD)
        label = row_labels[r]
        while _text_width(draw, label, font) > left - 2 * PAD and len(label) > 4:
            label = label[:-2] + "…"
        draw.text((PAD, y + size // 2 - line_h // 2), label, fill=(0, 0, 0), font=font)
        runs_in_row = [cells.get((key, ck)) for ck, _ in layout_cols]
        first = next((run for run in runs_in_row if run), None)
        sources = [(first["id"] if first else None, first["source_image_path"] if first else None)]
        for c, run in enumerate([None] + runs_in_row):
            x = left + c * (size + PAD)
            if c == 0:
                run_id, rel = sources[0]
            else:
                run_id, rel = (run["id"], run["image_path"]) if run else (None, None)
            im = _load_thumb(store.home.resolve_artifact(rel), size) if rel else None
            if im is not None:
                sheet.paste(im, (x + (size - im.width) // 2, y + (size - im.height) // 2))
            else:
                draw.rectangle((x, y, x + size - 1, y + size - 1), fill=MISSING)
                status = run["status"] if run else ("no source" if c == 0 else "no run")
                draw.text((x + PAD, y + PAD), status, fill=(90, 90, 90), font=font)
            layout.cells.append(Cell(r, c, run_id, (x, y, x + size, y + size), im is not None))
    if layout.truncated_rows or layout.truncated_cols:
        note = f"+{layout.truncated_rows} rows, +{layout.truncated_cols} columns not shown"
        draw.text((PAD, PAD), note, fill=(160, 0, 0), font=font)
    return layout
