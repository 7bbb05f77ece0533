"""What every screen shares: access to the store and value formatting."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from textual import work
from textual.message import Message
from textual.screen import Screen

from store.safe_text import safe_text

from .. import keymap

# Below this size side panes collapse and rows of fields stack (see app.tcss, `.narrow`).
NARROW_WIDTH, SHORT_HEIGHT = 100, 30
# How often screens that show runs ask the store whether anything changed (one row read).
WATCH_S = 1.0


class StoreScreen(Screen):
    """A screen reading the app's store; subclasses fill their widgets from thread workers.

    A subclass that sets `live = True` gets `on_store_changed()` called whenever runs, scores
    or experiments change in any process (engines included), found by polling the store's
    change counter: a one-row read, so a screen reloads only when there is something new."""

    live = False
    reopened = False  # set by MtpApp.make_screen when a kept screen is opened again
    KEY_SCOPE: str | None = None  # its keymap scope: letter-only actions yield to form controls

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # A letter typed on a form control (a Select on Results, say) belongs to the form; the
        # control's own keys (space, enter, arrows) are bound on the control and still run.
        if (
            self.KEY_SCOPE is not None
            and action in keymap.character_actions(self.KEY_SCOPE)
            and keymap.in_form(self.focused)
        ):
            return None
        return True

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class Changed(Message):
        token: str

    @property
    def store(self):
        return self.app.store

    # Screen titles show in the header and may name experiments and concepts: shown safe.
    def validate_title(self, title):
        title = super().validate_title(title)
        return None if title is None else safe_text(title)

    def validate_sub_title(self, sub_title):
        sub_title = super().validate_sub_title(sub_title)
        return None if sub_title is None else safe_text(sub_title)

    def on_mount(self) -> None:
        self._change_token: str | None = None
        if self.live:
            try:  # the baseline, so a change between this screen's first load and the first tick counts
                self._change_token = self.store.change_token()
            except Exception:
                pass
            self.set_interval(WATCH_S, self._poll_changes)
        self._apply_size(self.app.size)

    def on_resize(self, event) -> None:
        self._apply_size(event.size)

    def _apply_size(self, size) -> None:
        self.set_class(size.width < NARROW_WIDTH, "narrow")
        self.set_class(size.height < SHORT_HEIGHT, "short")

    def _poll_changes(self) -> None:
        if self.is_current:
            self._read_token()

    @work(thread=True, exclusive=True, group="change-token")
    def _read_token(self) -> None:
        try:
            token = self.store.change_token()
        except Exception:  # a busy or vanished database: try again on the next tick
            return
        self.post_message(self.Changed(token))

    def on_store_screen_changed(self, message: Changed) -> None:
        first = self._change_token is None
        changed = message.token != self._change_token
        self._change_token = message.token
        if changed and not first:
            self.on_store_changed()

    def on_store_changed(self) -> None:
        """Reload what this screen shows; called only when the store changed."""


def age(ts: datetime | None, now: datetime | None = None) -> str:
    """How long ago ``ts`` was; ``now`` should be the clock that wrote it (the database's for
    heartbeats: this host's may be minutes off). Never negative."""
    if ts is None:
        return "-"
    if ts.tzinfo is None:  # SQLite drops the zone; the store writes UTC
        ts = ts.replace(tzinfo=UTC)
    s = max(0.0, ((now or datetime.now(UTC)) - ts).total_seconds())
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if 0 < seconds < 0.5:
        return "<1s"  # not "0s": a time that rounds to nothing is still a time
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
