"""A DataTable that draws plain one-line text cells without Rich's layout machinery.

DataTable renders every visible cell through `Styled(Padding(cell))` and `console.render_lines`:
about 45 µs a cell, so a 40 x 18 page of runs cost ~33 ms in cell rendering alone, more than
everything else a page needs (FastTable: ~12 µs a cell). Almost every cell mtp shows is one line of unstyled text, and for
those the result is fixed: padding, the text cut to width with an ellipsis, spaces to the width,
padding. `FastTable` builds exactly those segments (same text, same styles, same row/column meta
for mouse clicks) and hands anything else (headers, labels, markup strings, styled or multi-line
text, rows taller than one line) to DataTable. `tests/tui/test_fast_table.py` renders every case
both ways and requires identical segments, so a Textual upgrade that changes the stock output
fails there instead of drawing differently.

Every cell is user text until shown otherwise: `add_row` and `update_cell` show str cells safe
and literally (`tui.safe.cell`: no markup, controls escaped) and escape controls in Text cells.
"""

from __future__ import annotations

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.widgets import DataTable

from ..safe import cell as safe_cell
from ..safe import safe_rich

_NULL = Style.null()


def _safe(value):
    if isinstance(value, str):
        return safe_cell(value)
    if isinstance(value, Text):
        return safe_rich(value)
    return value  # numbers, None: DataTable formats them itself


class FastTable(DataTable):
    def add_row(self, *cells, height=1, key=None, label=None):
        return super().add_row(
            *map(_safe, cells),
            height=height,
            key=key,
            label=None if label is None else _safe(label),
        )

    def update_cell(self, row_key, column_key, value, *, update_width: bool = False) -> None:
        super().update_cell(row_key, column_key, _safe(value), update_width=update_width)

    def settle(self) -> None:
        """Measure the rows just added now, not on the next idle as DataTable does: a paint in
        between showed a page with header-wide columns and every cell cut (and a snapshot taken
        then, under load, caught it)."""
        if self._require_update_dimensions:
            self._require_update_dimensions = False
            new_rows = self._new_rows.copy()
            self._new_rows.clear()
            self._update_dimensions(new_rows)

    def _render_cell(
        self,
        row_index: int,
        column_index: int,
        base_style: Style,
        width: int,
        cursor: bool = False,
        hover: bool = False,
    ):
        if row_index < 0 or column_index < 0:  # header row, row labels: stock rendering
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        row_key = self._row_locations.get_key(row_index)
        column_key = self._column_locations.get_key(column_index)
        cache_key = (
            row_key,
            column_key,
            base_style,
            cursor,
            hover,
            self._show_hover_cursor,
            self._update_count,
            self._pseudo_class_state,
        )
        cache = self._cell_render_cache
        if cache_key in cache:
            return cache[cache_key]
        cell = self._data[row_key].get(column_key)
        row = self.rows[row_key]
        if not _plain_line(cell) or row.height != 1 or width - 2 * self.cell_padding < 2:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)

        component_style, post_style = self._get_styles_to_render_cell(
            False,
            False,
            row_index < self.fixed_rows or column_index < self.fixed_columns,
            hover,
            cursor,
            self.show_cursor,
            self._show_hover_cursor,
            self.cursor_foreground_priority == "css",
            self.cursor_background_priority == "css",
        )
        pre_style = (
            base_style
            + Style.from_meta({"row": row_index, "column": column_index})
            + component_style
        )
        pad = self.cell_padding
        inner = max(width - 2 * pad, 0)
        text = cell.plain
        length = cell_len(text)
        if length > inner:
            if cell.overflow == "ellipsis":
                text = set_cell_size(text, inner - 1) + "…"
            else:
                text = set_cell_size(text, inner)
            length = cell_len(text)
        # The styles Styled gives each piece: pre + piece + post (a null piece style adds nothing).
        pad_style = _styled(pre_style + _NULL, post_style)
        text_style = _styled(
            pre_style + self.app.console.get_style(cell.style or "", default=_NULL), post_style
        )
        line = []
        if pad:
            line.append(Segment(" " * pad, pad_style))
        line.append(Segment(text, text_style))  # even when empty, as Rich does
        if inner > length:
            line.append(Segment(" " * (inner - length), pad_style))
        if pad:
            line.append(Segment(" " * pad, pad_style))
        cache[cache_key] = lines = [line]
        return lines


def _styled(style: Style, post_style: Style) -> Style:
    return style + post_style if post_style else style


def _plain_line(cell) -> bool:
    """One line of text without spans, justification, tabs or trailing blanks (which Rich trims
    before cutting to width): the case drawn directly."""
    if (
        type(cell) is not Text
        or cell.spans
        or not cell.no_wrap
        or cell.justify not in (None, "default")
    ):
        return False
    plain = cell.plain
    return (
        cell.overflow in ("ellipsis", "crop")
        and "\n" not in plain
        and "\t" not in plain
        and plain == plain.rstrip()
    )
