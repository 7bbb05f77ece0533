"""The quiet form controls (widgets/quiet.py) override Textual's `update_node_styles` to skip
restyles before mounting; once mounted they must look exactly like Textual's own controls."""

from __future__ import annotations

from textual.app import App
from textual.widgets import Button, Checkbox, Input, Select

from tui.widgets.quiet import FormButton, FormCheckbox, FormInput, FormSelect


def pairs():
    return [
        (Checkbox("tick", True, compact=True), FormCheckbox("tick", True, compact=True)),
        (
            Button("go", variant="primary", compact=True),
            FormButton("go", variant="primary", compact=True),
        ),
        (Input("4-20", compact=True), FormInput("4-20", compact=True)),
        (Select([("a", 1)], value=1, compact=True), FormSelect([("a", 1)], value=1, compact=True)),
    ]


class Pairs(App):
    def compose(self):
        self.pairs = pairs()
        for stock, quiet in self.pairs:
            yield stock
            yield quiet


async def test_quiet_controls_style_like_textuals_once_mounted():
    app = Pairs()
    async with app.run_test(size=(60, 20)) as pilot:
        await pilot.pause()
        for stock, quiet in app.pairs:
            assert set(stock.classes) == set(quiet.classes), type(stock).__name__
            for rule in ("color", "background", "border", "height", "width", "padding"):
                assert getattr(stock.styles, rule) == getattr(quiet.styles, rule), (
                    type(stock).__name__,
                    rule,
                )
            lines = [stock.render_line(0).text, quiet.render_line(0).text]
            assert lines[0] == lines[1], type(stock).__name__


async def test_quiet_controls_restyle_after_mounting():
    # A class change after mounting (a checkbox unticked, an input made invalid) must restyle.
    app = Pairs()
    async with app.run_test(size=(60, 20)) as pilot:
        await pilot.pause()
        app.set_focus(None)  # a focused control is drawn differently
        (stock, quiet), _, (stock_in, quiet_in), _ = app.pairs
        stock.value = quiet.value = False
        stock_in.add_class("-invalid")
        quiet_in.add_class("-invalid")
        await pilot.pause()
        for a, b in ((stock, quiet), (stock_in, quiet_in)):
            for rule in ("color", "background", "border"):
                assert getattr(a.styles, rule) == getattr(b.styles, rule), (type(a).__name__, rule)
            assert look(a) == look(b), type(a).__name__


def look(widget):
    return [
        (seg.text, seg.style and (seg.style.color, seg.style.bgcolor, seg.style.bold))
        for seg in widget.render_line(0)
    ]
