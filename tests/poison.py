"""Image files that must never stall an engine: a decompression bomb, an oversized image, a
truncated file, text, an empty file. Shared by the store and engine tests."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from PIL import Image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def bomb_png(w: int = 100_000, h: int = 100_000) -> bytes:
    """A few hundred bytes that claim w x h pixels: PIL's DecompressionBombError."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def good_png(path: Path, colour=(200, 100, 0)) -> Path:
    Image.new("RGB", (64, 64), colour).save(path)
    return path


POISONS = {
    "bomb": lambda p: p.write_bytes(bomb_png()),
    "oversized": lambda p: p.write_bytes(bomb_png(9000, 9000)),  # under PIL's limit, over ours
    "truncated": lambda p: p.write_bytes(good_png(p).read_bytes()[:60]),
    "not-an-image": lambda p: p.write_text("just some text\n"),
    "empty": lambda p: p.write_bytes(b""),
}
