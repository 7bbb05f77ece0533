"""A Footer that rebuilds its keys only when the keys it shows change."""
from __future__ import annotations

from textual.widgets import Footer


class SteadyFooter(Footer):
    """Textual's Footer rebuilds every key widget each time the screen's bindings may have
    changed (the screen mounts, focus moves): four rebuilds while the sweep builder opens, each
    followed by a layout of the whole screen. This one skips a rebuild that would show the same
    keys."""

    _shown: tuple | None = None

    def _keys(self) -> tuple:
        return tuple((b.binding, b.enabled, b.tooltip, self.app.get_key_display(b.binding))
                     for b in self.screen.active_bindings.values() if b.binding.show)

    async def recompose(self) -> None:
        if not self.is_attached:
            return
        keys = self._keys()
        if keys == self._shown:
            return
        self._shown = keys
        await super().recompose()
