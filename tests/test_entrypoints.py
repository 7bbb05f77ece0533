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


ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_in_readme_and_read_only_through_the_settings_object():
    import re

    from store.settings import documented

    readme = (ROOT / "README.md").read_text()
    for name, description in documented():
        assert f"`{name}`" in readme, f"README's settings table lacks {name}"
        assert description, f"{name} has no description"
    # No module reads an MTP_ variable by hand: one typed object, one place.
    pattern = re.compile(r"environ(?:\.get)?\(\s*[\"']MTP_|environ\[[\"']MTP_|getenv\([\"']MTP_")
    readers = [
        str(p.relative_to(ROOT))
        for pkg in ("store", "engine", "tui")
        for p in (ROOT / pkg).rglob("*.py")
        if pattern.search(p.read_text())
    ]
    assert readers == [], readers


@pytest.mark.parametrize("script", ["mtp", "mtp-tui", "mtp-engine"])
def test_a_bad_setting_is_one_line_naming_it(script, tmp_path):
    env = dict(os.environ, MTP_HOME=str(tmp_path), MTP_FAKE_STEP_S="soon")
    argv = {"mtp": ["runs"], "mtp-tui": [], "mtp-engine": ["--once", "--backend", "fake"]}[script]
    out = subprocess.run(
        [str(BIN / script), *argv], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "MTP_FAKE_STEP_S" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_engines_started_with_devices_get_every_option_but_the_device():
    from engine.cli import build_parser, child_argv

    args = build_parser().parse_args(
        ["--devices", "0,1", "--max-batch", "3", "--once", "--home", "/h", "--demo", "-v"]
    )
    argv = child_argv(args, "cuda:1")
    again = build_parser().parse_args(argv)
    assert again.device == "cuda:1" and again.devices is None
    assert (again.max_batch, again.once, again.home, again.demo, again.verbose) == (
        3,
        True,
        "/h",
        True,
        True,
    )
    assert "--poll" not in argv  # defaults stay implicit
