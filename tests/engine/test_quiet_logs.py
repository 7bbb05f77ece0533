"""Library chatter (root-logger warnings, Python warnings) goes to the engine log, and to the
terminal only with -v; the engine's own lines still reach the terminal."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import logging, sys, warnings
from pathlib import Path
from engine.cli import _setup_logging
_setup_logging(Path(sys.argv[1]), sys.argv[2] == "1")
logging.warning("No pretrained weights loaded for model 'ViT-B-32'")
warnings.warn("a library deprecation")
logging.getLogger("mtp.engine").info("engine line")
"""


def run(tmp_path, verbose: bool):
    log = tmp_path / f"engine-{verbose}.log"
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log), "1" if verbose else "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stderr, log.read_text()


def test_library_warnings_go_to_the_log_not_the_terminal(tmp_path):
    err, log = run(tmp_path, verbose=False)
    assert "engine line" in err
    assert "No pretrained weights" not in err and "WARNING:root" not in err
    assert "deprecation" not in err
    assert "No pretrained weights" in log and "a library deprecation" in log


def test_verbose_shows_them_too(tmp_path):
    err, _log = run(tmp_path, verbose=True)
    assert "No pretrained weights" in err and "WARNING:root" not in err
