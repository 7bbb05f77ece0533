"""The footer shows the focused widget's keys, and is rebuilt only when they change (Textual's
footer rebuilt every key widget on each focus change, after each screen's first paint, which
slowed opening screens)."""

from __future__ import annotations

from textual.app import App
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Label, Static
from textual.widgets._footer import FooterKey

from tests.tui import wait_for
from tui.widgets.footer import Footer


class Alpha(Static, can_focus=True):
    BINDINGS = [Binding("a", "noop", "alpha")]


class Beta(Static, can_focus=True):
    BINDINGS = [Binding("b", "beta", "beta")]

    def action_beta(self) -> None:
        pass


class Demo(App):
    BINDINGS = [Binding("q", "other", "quit-ish")]

    def compose(self):
        yield Alpha("one", id="one")
        yield Alpha("two", id="two")
        yield Beta("three", id="three")
        yield Footer(compact=True, show_command_palette=False)

    def action_noop(self) -> None:
        pass

    def action_other(self) -> None:
        pass


def shown(app) -> tuple[list[str], list[FooterKey]]:
    keys = list(app.screen.query(FooterKey))
    return sorted(k.description for k in keys), keys


async def test_footer_follows_focus_and_keeps_unchanged_keys():
    app = Demo()
    async with app.run_test(size=(80, 10)) as pilot:
        app.query_one("#one").focus()
        await pilot.pause()
        labels, first = shown(app)
        assert labels == ["alpha", "quit-ish"]

        app.query_one("#two").focus()  # same keys: the key widgets stay as they are
        await pilot.pause()
        labels, second = shown(app)
        assert labels == ["alpha", "quit-ish"] and all(a is b for a, b in zip(first, second))

        app.query_one("#three").focus()  # other keys: shown at once
        await pilot.pause()
        assert shown(app)[0] == ["beta", "quit-ish"]
        app.query_one("#one").focus()
        await pilot.pause()
        assert shown(app)[0] == ["alpha", "quit-ish"]


async def test_footer_follows_binding_changes_and_skips_identical_rebuilds():
    class Keys(Screen):
        BINDINGS = (Binding("ctrl+s", "save", "Save"), Binding("ctrl+r", "queue", "Queue"))
        can_queue = True

        def compose(self):
            yield Label("form")
            yield Footer(compact=True, show_command_palette=False)

        def check_action(self, action, parameters):
            return not (action == "queue" and not self.can_queue)  # False: hidden

    class KeysApp(App):
        def on_mount(self):
            self.push_screen(Keys())

    app = KeysApp()
    async with app.run_test(size=(60, 10)) as pilot:

        def descriptions():
            return [k.description for k in app.screen.query(FooterKey)]

        await wait_for(pilot, lambda: descriptions() == ["Save", "Queue"], what="footer keys")
        keys = list(app.screen.query(FooterKey))
        app.screen.refresh_bindings()  # nothing changed: the same key widgets stay
        await pilot.pause(0.2)
        assert list(app.screen.query(FooterKey)) == keys
        app.screen.can_queue = False  # a hidden binding: the footer must drop it
        app.screen.refresh_bindings()
        await wait_for(pilot, lambda: descriptions() == ["Save"], what="footer without Queue")
