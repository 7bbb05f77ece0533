"""Textual's Footer, rebuilt only when the keys it shows change.

The stock Footer recomposes (every key widget unmounted, built, mounted and styled again) after
each bindings update, and a screen publishes one per focus change: opening a form screen cost
four or five rebuilds of identical keys after its first paint, ~30 ms that kept the app busy.
Here updates are coalesced to one check after the next refresh, and the keys are rebuilt only
when what compose would show (keys, labels, enabled state, tooltips) differs from what is shown.
"""

from __future__ import annotations

from textual.widgets import Footer as _TextualFooter


class Footer(_TextualFooter):
    _shown: tuple | None = None
    _check_pending = False

    def _signature(self) -> tuple:
        app = self.app
        return (self.compact, self.show_command_palette) + tuple(
            (
                binding.key,
                app.get_key_display(binding),
                binding.description,
                binding.action,
                binding.group,
                enabled,
                tooltip,
            )
            for (_node, binding, enabled, tooltip) in self.screen.active_bindings.values()
            if binding.show
        )

    def compose(self):
        if self._bindings_ready:
            self._shown = self._signature()
        yield from super().compose()

    def bindings_changed(self, screen) -> None:
        self._bindings_ready = True
        if not screen.app.app_focus:
            return
        if self.is_attached and screen is self.screen and not self._check_pending:
            self._check_pending = True
            self.call_after_refresh(self._recompose_if_changed)

    async def _recompose_if_changed(self) -> None:
        self._check_pending = False
        if not self.is_attached:
            return
        if self._signature() != self._shown:
            await self.recompose()
