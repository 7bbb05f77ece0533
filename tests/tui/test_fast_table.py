"""FastTable draws plain text cells itself: it must give exactly DataTable's segments."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual.app import App
from textual.widgets import DataTable

from tui.widgets.fast_table import FastTable

CELLS = [
    Text(
        "a photo of a dog on the beach", no_wrap=True, overflow="ellipsis"
    ),  # cut with an ellipsis
    Text("short", no_wrap=True, overflow="ellipsis"),  # padded to the column
    Text("", no_wrap=True, overflow="ellipsis"),
    Text(
        "日本語の犬の写真です", no_wrap=True, overflow="ellipsis"
    ),  # double-width, cut mid-character
    Text("cropped text that is long", no_wrap=True, overflow="crop"),
    Text("styled", style="bold red", no_wrap=True, overflow="ellipsis"),
    Text("0.2133", no_wrap=True),  # overflow None: stock path
    Text("trailing   ", no_wrap=True, overflow="ellipsis"),  # Rich trims blanks first: stock path
    Text.from_markup("[b]marked[/] up", end=""),  # spans: stock path
    "a [b]markup[/b] string",  # not Text: stock path
    Text("two\nlines", no_wrap=True),
    Text("a\ttab", no_wrap=True, overflow="ellipsis"),
]


class TableApp(App):
    def compose(self):
        yield FastTable(cursor_type="cell", zebra_stripes=True)


def _segments(lines):
    return [[(seg.text, seg.style, seg.control) for seg in line] for line in lines]


def test_fast_cells_equal_datatable_cells():
    async def run():
        app = TableApp()
        async with app.run_test(size=(100, 20)) as pilot:
            table = app.query_one(FastTable)
            table.add_column("narrow", width=8)
            table.add_column("wide", width=24)
            table.add_column("auto")
            table.fixed_columns = 1
            for i, cell in enumerate(CELLS):
                table.add_row(cell, cell, cell, key=str(i))
            await pilot.pause()
            compared = 0
            for row in range(len(CELLS)):
                for col, column in enumerate(table.ordered_columns):
                    width = column.get_render_width(table)
                    for cursor in (False, True):
                        for hover in (False, True):
                            for base in (
                                table.rich_style,
                                table.get_component_rich_style("datatable--even-row"),
                            ):
                                table._cell_render_cache.clear()
                                stock = DataTable._render_cell(
                                    table, row, col, base, width, cursor, hover
                                )
                                table._cell_render_cache.clear()
                                mine = FastTable._render_cell(
                                    table, row, col, base, width, cursor, hover
                                )
                                assert _segments(mine) == _segments(stock), (
                                    row,
                                    col,
                                    cursor,
                                    hover,
                                )
                                compared += 1
            # the header goes the stock way too, and must match
            table._cell_render_cache.clear()
            header_width = table.ordered_columns[1].get_render_width(table)
            assert _segments(
                FastTable._render_cell(table, -1, 1, table.rich_style, header_width)
            ) == _segments(DataTable._render_cell(table, -1, 1, table.rich_style, header_width))
            # and the fast path is really taken for the plain cells (else this test proves nothing)
            calls = []
            original = DataTable._render_cell
            DataTable._render_cell = lambda self, *a, **k: (
                calls.append(a) or original(self, *a, **k)
            )
            try:
                table._cell_render_cache.clear()
                FastTable._render_cell(table, 1, 1, table.rich_style, 24)
                assert calls == []
                FastTable._render_cell(table, 8, 1, table.rich_style, 24)
                assert len(calls) == 1
            finally:
                DataTable._render_cell = original
            assert compared == len(CELLS) * 3 * 8

    asyncio.run(run())


def test_settle_measures_new_rows_before_any_paint():
    """Without settle, DataTable sizes columns on its next idle: a paint before that showed
    header-wide columns with every cell cut."""

    async def run():
        app = TableApp()
        async with app.run_test(size=(100, 20)) as pilot:
            table = app.query_one(FastTable)
            table.add_column("prompt", key="prompt")
            await pilot.pause()
            prompt = "a photo of a corgi jumping in the snow"
            table.add_rows([[Text(prompt, no_wrap=True, overflow="ellipsis")]])
            before = table.columns["prompt"].get_render_width(table)
            table.settle()  # no await: nothing else ran in between
            after = table.columns["prompt"].get_render_width(table)
            assert before < len(prompt) <= after - 2 * table.cell_padding

    asyncio.run(run())
