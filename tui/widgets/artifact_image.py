"""An image from the artifact folder, decoded off the UI thread, with a placeholder when missing.

Rendering: textual-image picks kitty (TGP) or sixel when the terminal answers for them, else
half-cell blocks. Inside tmux the graphics protocols do not pass through reliably, so half
cells are forced there. MTP_IMAGE=auto|halfcell|unicode|sixel|tgp overrides the choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image as PILImage
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static

from store.settings import settings

from ..safe import plain

THUMB_PX = 384


class _NotATerminal:
    """Stands in for stdout while textual-image is imported, so it sends no terminal queries."""

    def __init__(self, real):
        self._real = real

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self._real, name)


def _sizeless(stream) -> bool:
    """A terminal that reports 0 columns or rows (a bare pty, some serial consoles): asking it
    for its cell size divides by zero inside textual-image."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return size.columns == 0 or size.lines == 0


def _import_textual_image():
    """textual-image asks the terminal for graphics support and cell size at import time, so it
    is imported here, before any App runs. Inside tmux, or when MTP_IMAGE names a method, the
    answer is not needed; and tmux can answer after textual-image's 0.1 s wait, when Textual
    already reads stdin and takes the reply for key presses (a stray '?' opened Help)."""
    import sys

    if os.environ.get("TMUX") or settings().image != "auto" or _sizeless(sys.__stdout__):
        real = sys.__stdout__
        sys.__stdout__ = _NotATerminal(real)
        try:
            from textual_image import widget
        finally:
            sys.__stdout__ = real
        return widget
    from textual_image import widget

    return widget


_ti = _import_textual_image()


def image_widget_class():
    choice = settings().image
    if choice == "auto" and os.environ.get("TMUX"):
        choice = "halfcell"
    return {
        "halfcell": _ti.HalfcellImage,
        "unicode": _ti.UnicodeImage,
        "sixel": _ti.SixelImage,
        "tgp": _ti.TGPImage,
    }.get(choice, _ti.Image)


def array_to_image(arr, size: int = 128) -> PILImage.Image:
    """A 2D attention map as a colour image (dark blue low, yellow high), nearest-upscaled."""
    import numpy as np

    a = np.asarray(arr, dtype=np.float32)
    while a.ndim > 2:
        a = a.mean(axis=0)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    stops = np.array(
        [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32
    )
    x = a * (len(stops) - 1)
    i = np.clip(np.floor(x).astype(int), 0, len(stops) - 2)
    t = (x - i)[..., None]
    rgb = stops[i] * (1 - t) + stops[i + 1] * t
    img = PILImage.fromarray(rgb.astype(np.uint8))
    return img.resize((size, size), PILImage.NEAREST)


def load_thumbnail(path: Path | None) -> tuple[PILImage.Image | None, str]:
    """(image, "") or (None, reason); never raises, a missing artifact is a normal state."""
    if path is None:
        return None, "no image recorded"
    if not Path(path).is_file():
        return None, f"missing: {path}"
    try:
        with PILImage.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB_PX, THUMB_PX))
            return im.copy(), ""
    except Exception as exc:  # a truncated or foreign file must not take the screen down
        return None, f"unreadable: {exc}"


class ArtifactImage(Vertical):
    """A captioned picture; `show_path` / `show_image` swap its content."""

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class Loaded(Message):
        target: ArtifactImage
        image: PILImage.Image | None
        reason: str
        token: int

    def __init__(self, caption: str = "", **kwargs):
        super().__init__(**kwargs)
        self.caption = caption
        self._token = 0

    def compose(self) -> ComposeResult:
        yield Static(plain(self.caption), classes="caption")
        yield Static("(no image)", classes="placeholder")

    def set_caption(self, caption: str) -> None:
        self.caption = caption
        self.query_one(".caption", Static).update(plain(caption))

    def show_path(self, path: Path | None) -> None:
        self._token += 1
        self._decode(path, self._token)

    def show_image(self, image: PILImage.Image | None, reason: str = "") -> None:
        self._token += 1
        self._apply(image, reason or "no image")

    @work(thread=True, group="thumbs")
    def _decode(self, path: Path | None, token: int) -> None:
        image, reason = load_thumbnail(path)
        self.post_message(self.Loaded(self, image, reason, token))

    def on_artifact_image_loaded(self, message: ArtifactImage.Loaded) -> None:
        message.stop()
        if message.token == self._token:  # a later request superseded this decode
            self._apply(message.image, message.reason)

    def _apply(self, image: PILImage.Image | None, reason: str) -> None:
        for old in self.query(".picture, .placeholder"):
            old.remove()
        if image is None:
            self.mount(Static(plain(reason), classes="placeholder"))
        else:
            self.mount(image_widget_class()(image, classes="picture"))

    @property
    def has_picture(self) -> bool:
        return bool(self.query(".picture"))
