"""The three console scripts a newcomer types first answer --help quickly and without torch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "script,words",
    [
        ("mtp-tui", ["--demo", "--home"]),
        ("mtp", ["experiment", "export", "runs"]),
        ("mtp-engine", ["--device", "--max-batch", "--once", "--demo"]),
    ],
)
def test_help(script, words, tmp_path):
    exe = BIN / script
    assert exe.exists(), f"{script} is not installed; run pip install -e ."
    env = dict(os.environ, MTP_HOME=str(tmp_path))
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    for w in words:
        assert w in out.stdout


def test_store_and_control_modules_never_import_torch():
    code = (
        "import sys, tui.cli.main, store.queries, store.sweep.spec, store.queue, store.report.export, store.report.aggregate, "
        "engine.control, engine.launch; "
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'open_clip') if m in sys.modules]; "
        "assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
