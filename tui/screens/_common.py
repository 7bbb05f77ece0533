"""What every screen shares: access to the store and value formatting."""
from __future__ import annotations

from datetime import datetime, timezone

from textual.screen import Screen


class StoreScreen(Screen):
    """A screen reading the app's store; subclasses fill their widgets from thread workers."""

    @property
    def store(self):
        return self.app.store


def age(ts: datetime | None) -> str:
    if ts is None:
        return "-"
    if ts.tzinfo is None:  # SQLite drops the zone; the store writes UTC
        ts = ts.replace(tzinfo=timezone.utc)
    s = (datetime.now(timezone.utc) - ts).total_seconds()
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
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
