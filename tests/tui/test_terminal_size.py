"""A terminal that reports 0 columns (a bare pty) must not crash the app at start: textual-image
divides by the reported size when it is imported, so such a terminal is not asked."""

from __future__ import annotations

import fcntl
import os
import struct
import termios

from tui.widgets.artifact_image import _sizeless


def test_a_pty_without_a_size_is_not_asked_and_one_with_a_size_is():
    master, slave = os.openpty()
    try:
        with open(slave, "w", closefd=False) as stream:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
            assert _sizeless(stream)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            assert not _sizeless(stream)
    finally:
        os.close(master)
        os.close(slave)


def test_a_file_that_is_no_terminal_is_left_to_textual_image(tmp_path):
    with open(tmp_path / "out.txt", "w") as stream:
        assert not _sizeless(stream)
