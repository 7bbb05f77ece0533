"""The engine's log is written through store.safe_text: names, prompts and errors it echoes
never put a raw control character in the file someone `tail -f`s."""

from __future__ import annotations

from tests.store.test_safe_text import HOSTILE, _unsafe_chars


def test_engine_log_lines_are_written_safe(tmp_path):
    """The engine's log (file and stderr) echoes names, prompts and errors: shown safe, and a
    traceback keeps its lines."""
    import logging

    from engine.cli import _setup_logging

    root = logging.getLogger("mtp")
    before = list(root.handlers)
    logfile = tmp_path / "engine.log"
    try:
        _setup_logging(logfile, verbose=False)
        log = logging.getLogger("mtp.engine")
        log.error("loading %s failed:\n%s", HOSTILE[0], "Traceback\n\tline")
        log.warning("run(s) [3] failed: %s", "".join(HOSTILE))
        for h in root.handlers:
            h.flush()
    finally:
        for h in root.handlers[len(before) :]:
            h.close()
        root.handlers[:] = before
    text = logfile.read_text(encoding="utf-8")
    assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text
    assert not _unsafe_chars(text)
    assert "loading \\x1b]0;pwned\\x07 failed:\nTraceback\n\tline" in text
