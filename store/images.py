"""Image files: what mtp accepts as a reference or source image, and how every image file is
read for scoring and inversion so that no accepted file can exhaust memory.

Torch-free (PIL only): the app and `mtp` check images when they are given, the engine checks
them again before use (files in the data folder can go bad, and old concepts predate a rule)
and reads them through ``open_bounded``.

Limits, stated in README:
- at most ``MAX_IMAGE_PIXELS`` pixels (a decoded image then takes at most 256 MiB, 4 bytes a
  pixel), each side at least ``MIN_SIDE`` pixels, the longer side at most ``MAX_ASPECT`` times
  the shorter: a 30000x1 file passes a pixel cap alone, and an aspect-keeping resize to a
  224-pixel shorter side (CLIP's, DINO's) turns it into a 6.7-million-pixel-wide image.
- ``open_bounded`` returns an image whose longer side is at most ``MAX_WORK_SIDE``: files
  within it are read exactly as before (scores of normal images are unchanged, bit for bit);
  a larger one is decoded at a reduced scale where the format can (JPEG), then averaged down
  by an integer factor in strips, so besides the decoded file only a few MiB are held.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import IO

# Far above any size Stable Diffusion takes (sources are resized), far below what exhausts memory.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
# A reference or source image narrower than this says nothing about a subject: a sliver or a
# speck, not a photo (thumbnails of 32 or 64 pixels still pass).
MIN_SIDE = 16
# Wider than a phone's panorama (about 4:1 to 7:1): a subject photo or an image to invert is
# never longer, and every model input squashes or crops it to a square anyway.
MAX_ASPECT = 8
# Larger images are read averaged down to at most this side: a 12-megapixel phone photo
# (4032x3024) stays untouched, while the working copy of any image is at most 48 MiB.
MAX_WORK_SIDE = 4096
# Rows converted at a time while averaging a large image down (bounded extra memory).
_STRIP_BYTES = 8 << 20


from .errors import InputError  # noqa: E402  (re-exported: the image checks raise it)


# ------------------------------------------------------------------ what a path is
def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def file_problem(path: str | os.PathLike, what: str = "an image file") -> str | None:
    """None when ``path`` is a regular file (through symlinks), else what it is instead.

    Only ``stat`` is used: a FIFO would block an ``open`` and ``/dev/zero`` never ends a read,
    so neither is ever opened here."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if p.is_symlink():
            return f"is a symbolic link to {os.readlink(p)}, which does not exist"
        return "no such file"
    except PermissionError:
        return "permission denied (a folder on its path cannot be searched)"
    except OSError as exc:
        return f"cannot be looked at ({exc.strerror or exc})"
    if stat.S_ISREG(st.st_mode):
        return None
    kind = _kind(st.st_mode)
    if p.is_symlink():
        kind = f"a symbolic link to {os.path.realpath(p)}, {kind}"
    return f"is {kind}, not {what}"


def open_regular(path: str | os.PathLike) -> IO[bytes]:
    """``path`` opened for reading, refused with InputError unless it is a regular file.

    Checked with ``stat`` first, then again on the open descriptor (opened non-blocking, so a
    file swapped for a FIFO in between cannot hang the caller)."""
    p = Path(path)
    problem = file_problem(p)
    if problem:
        raise InputError(f"{p}: {problem}")
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except PermissionError as exc:
        raise InputError(f"{p}: not readable (permission denied: {exc.strerror})") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot be opened ({exc.strerror or exc})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InputError(f"{p}: is {_kind(st.st_mode)}, not an image file")
    return os.fdopen(fd, "rb")


# ------------------------------------------------------------------ the input check
def shape_problem(width: int, height: int) -> str | None:
    """Why an image of this size is refused, or None."""
    if width * height > MAX_IMAGE_PIXELS:
        return (
            f"image too large ({width}x{height} pixels; the limit is "
            f"{MAX_IMAGE_PIXELS // (1024 * 1024)} megapixels): resize it first"
        )
    if min(width, height) < MIN_SIDE or max(width, height) > MAX_ASPECT * min(width, height):
        return (
            f"not a usable image shape ({width}x{height} pixels): each side must be at least "
            f"{MIN_SIDE} pixels and the longer side at most {MAX_ASPECT} times the shorter"
        )
    return None


def check_image(path: str | os.PathLike, *, shape: bool = True) -> None:
    """Raise InputError naming the file and the reason when it is not a usable image.

    Anything a decoder raises counts (decompression bombs, truncated files, empty files, other
    formats), so a bad file is refused here and can never stall an engine. ``shape=False``
    skips the size and aspect limits (for the engine's own generated images, whose size the
    sweep chose), never the pixel cap.
    """
    from PIL import Image, UnidentifiedImageError

    if not os.fspath(path):
        raise InputError("no image file given")
    p = Path(path).expanduser()
    try:
        with open_regular(p) as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                raise InputError(f"{p}: not a readable image (the file is empty)")
            with Image.open(fh) as im:
                w, h = im.size
                problem = shape_problem(w, h)
                if problem and (shape or w * h > MAX_IMAGE_PIXELS):
                    raise InputError(f"{p}: {problem}")
                im.verify()
            fh.seek(0)
            with Image.open(fh) as im:
                if max(im.size) > MAX_WORK_SIDE:
                    # A JPEG decodes every coefficient at a reduced scale too (truncation and
                    # corrupt data are still found) in a fraction of the memory.
                    im.draft(None, _fit(im.size, MAX_WORK_SIDE))
                im.load()
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"{p}: image too large, refused as a possible decompression bomb ({exc})"
        ) from None
    except UnidentifiedImageError:
        raise InputError(f"{p}: not a readable image (no image format recognises it)") from None
    except PermissionError as exc:
        raise InputError(f"{p}: not a readable image (permission denied: {exc.strerror})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{p}: not a readable image, truncated or corrupt ({exc})") from None
    except (Exception, MemoryError) as exc:  # noqa: BLE001 - a decoder may raise anything
        raise InputError(f"{p}: not a readable image ({type(exc).__name__}: {exc})") from None


def image_problem(path: str | os.PathLike | None, *, shape: bool = True) -> str | None:
    """None when ``path`` is a usable image, else ``check_image``'s message naming it."""
    try:
        check_image(path or "", shape=shape)
    except InputError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - whatever a decoder raises, the image is unusable
        return f"{path}: not a readable image ({type(exc).__name__}: {exc})"
    return None


# ------------------------------------------------------------------ bounded reading
def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    w, h = size
    scale = max_side / max(w, h)
    return max(1, math.floor(w * scale)), max(1, math.floor(h * scale))


def open_bounded(path: str | os.PathLike, mode: str = "RGB", max_side: int = MAX_WORK_SIDE):
    """The image at ``path`` in ``mode``, its longer side at most ``max_side``.

    An image within ``max_side`` comes back exactly as ``Image.open(path).convert(mode)``
    would give it. A larger one is decoded at the smallest scale that still covers
    ``max_side`` where the format allows it (JPEG), then averaged down by an integer factor
    (``Image.reduce``, a box filter) a strip of rows at a time, converting each strip, so what
    is held besides the decoded file is the result (at most ``max_side`` squared) and one strip.
    Raises InputError for a path that is not a regular file; decoder errors pass through.
    """
    from PIL import Image

    with open_regular(Path(path).expanduser()) as fh, Image.open(fh) as im:
        if max(im.size) <= max_side:
            return im.convert(mode)
        im.draft(mode if mode in ("RGB", "L") else None, _fit(im.size, max_side))
        im.load()
        return _reduce_in_strips(im, mode, max_side)


def bounded(image, max_side: int = MAX_WORK_SIDE):
    """An in-memory image with its longer side at most ``max_side`` (the same object when it
    already is), reduced the way ``open_bounded`` reduces a file."""
    if max(image.size) <= max_side:
        return image
    return _reduce_in_strips(image, image.mode, max_side)


def _reduce_in_strips(im, mode: str, max_side: int):
    from PIL import Image

    w, h = im.size
    factor = max(1, math.ceil(max(w, h) / max_side))
    if factor == 1:
        return im.convert(mode)
    out = Image.new(mode, (math.ceil(w / factor), math.ceil(h / factor)))
    # Strips a whole number of factors high: each output pixel averages one factor x factor
    # block, so reducing strip by strip equals reducing the whole image.
    rows = factor * max(1, _STRIP_BYTES // (max(w, 1) * 4 * factor))
    for top in range(0, h, rows):
        strip = im.crop((0, top, w, min(h, top + rows)))
        if strip.mode != mode:
            strip = strip.convert(mode)
        out.paste(strip.reduce(factor), (0, top // factor))
    return out


def crop_aspect(image, max_aspect: float = MAX_ASPECT):
    """The central part of ``image`` whose longer side is at most ``max_aspect`` times the
    shorter (the same object when it already is).

    For encoders that resize the shorter side to a fixed size and center-crop a square (CLIP,
    DINO): they look at the center only, and an extreme shape (a generated 8x4096 image, a file
    that predates the input check) would otherwise be resized to millions of pixels first."""
    w, h = image.size
    if max(w, h) <= max_aspect * min(w, h):
        return image
    if w > h:
        keep = int(max_aspect * h)
        left = (w - keep) // 2
        return image.crop((left, 0, left + keep, h))
    keep = int(max_aspect * w)
    top = (h - keep) // 2
    return image.crop((0, top, w, top + keep))
