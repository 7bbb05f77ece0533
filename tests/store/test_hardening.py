"""Bad input gets a message, not a traceback; the data folder is private; exports and filters
are safe with hostile text."""

from __future__ import annotations

import csv
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import select

from store.models import Run, Score
from store.queries import InputError, RunFilter, list_runs, save_experiment, update_runs
from store.report.export import export_runs_csv, export_summary_csv
from store.sweep.grammar import SweepError
from store.sweep.spec import ExperimentSpec
from tests.poison import bomb_png
from tui.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def small_spec(**kw) -> ExperimentSpec:
    base = dict(
        model="fake-model",
        source_prompt="a dog",
        target_prompts=["a dog on the beach"],
        num_steps=4,
        width=64,
        height=64,
        seeds="0",
        layers="decoder",
        start_step="1",
        final_step="end",
        baseline=False,
    )
    base.update(kw)
    return ExperimentSpec(**base)


# ------------------------------------------------------------------ item 7: messages
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_guidance_is_refused_with_a_message(capsys, home, value):
    code, out, err = run(
        capsys,
        "--home",
        str(home.root),
        "experiment",
        "create",
        "g",
        "--model",
        "org/m",
        "--prompt",
        "a dog",
        f"--guidance={value}",
        "--queue",
    )
    assert code == 2 and "guidance" in err and "finite" in err and "Traceback" not in err
    with pytest.raises(SweepError, match="guidance"):
        save_experiment(
            __import__("store.db", fromlist=["Store"]).Store(home),
            "g",
            small_spec(guidance=float(value)),
            queue=True,
        )


@pytest.mark.subprocess
def test_corrupt_database_gets_a_message_in_every_entry_point(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "mtp.db").write_bytes(b"this is not sqlite at all" * 100)
    code, _, err = run(capsys, "--home", str(home), "queue")
    assert code == 2 and "is not a readable mtp database" in err and "mtp init" in err
    from tui.app import main as tui_main

    assert tui_main(["--home", str(home)]) == 2
    assert "is not a readable mtp database" in capsys.readouterr().err
    env = dict(os.environ, PYTHONPATH=str(ROOT), MTP_ENGINE_BACKEND="fake")
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--home", str(home), "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "is not a readable mtp database" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unusable_data_folder_gets_a_message(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run(capsys, "--home", str(blocker / "home"), "init")
    assert code == 2 and "cannot create the data folder" in err and "--home" in err
    # a command that only reads names the folder it looked in and creates nothing
    code, _, err = run(capsys, "--home", str(blocker / "home"), "queue")
    assert code == 2 and f"no data folder {blocker / 'home'}" in err and "--home" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a read-only mode")
def test_read_only_data_folder_gets_a_message(tmp_path, capsys):
    home = tmp_path / "home"
    assert main(["--home", str(home), "init"]) == 0
    capsys.readouterr()
    (home / "mtp.db").chmod(0o400)
    home.chmod(0o500)
    try:
        code, _, err = run(capsys, "--home", str(home), "queue", "pause")
        assert code == 2 and "writable" in err
    finally:
        home.chmod(0o700)


@pytest.mark.parametrize(
    "content,fragment",
    [
        (bomb_png(), "decompression bomb"),
        (bomb_png(9000, 9000), "image too large"),
        (b"", "the file is empty"),
        (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "truncated or corrupt"),
        (b"hello", "no image format recognises it"),
    ],
)
def test_concept_add_refuses_bad_images_with_a_message(capsys, home, tmp_path, content, fragment):
    bad = tmp_path / "ref.png"
    bad.write_bytes(content)
    code, _, err = run(
        capsys,
        "--home",
        str(home.root),
        "concept",
        "add",
        "c",
        "--image",
        str(bad),
        "--model",
        "org/model",
    )
    assert code == 2 and str(bad) in err and fragment in err


# ------------------------------------------------------------------ item 8: files, exports, filters
def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.subprocess
def test_data_folder_is_private_unless_shared_with_the_group(tmp_path, shared):
    home = tmp_path / "home"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MTP_SHARED_GROUP", None)
    if shared:
        env["MTP_SHARED_GROUP"] = "1"
    # A permissive login umask must not leak through.
    subprocess.run(
        ["sh", "-c", f'umask 022 && "{sys.executable}" -m tui.cli.main --home "{home}" demo'],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    folder, private_file = (0o2770, 0o660) if shared else (0o700, 0o600)
    for d in (home, home / "artifacts", home / "concepts", home / "logs", home / "exports"):
        assert _mode(d) == folder, d
    files = [p for p in home.rglob("*") if p.is_file()]
    assert home / "mtp.db" in files and len(files) > 1
    for f in files:
        assert _mode(f) & 0o007 == 0 and _mode(f) & 0o770 <= private_file & 0o770, (
            f,
            oct(_mode(f)),
        )


@pytest.mark.subprocess
def test_copied_images_do_not_keep_the_originals_world_readable_mode(tmp_path):
    from tests.poison import good_png

    home = tmp_path / "home"
    ref = good_png(tmp_path / "ref.png")
    src = good_png(tmp_path / "src.png")
    for p in (ref, src):
        p.chmod(0o644)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MTP_SHARED_GROUP", None)
    cli = [sys.executable, "-m", "tui.cli.main", "--home", str(home)]
    subprocess.run(
        cli + ["concept", "add", "c", "--image", str(ref), "--model", "org/model"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        cli
        + [
            "experiment",
            "create",
            "e",
            "--model",
            "org/m",
            "--prompt",
            "a dog",
            "--source-image",
            str(src),
            "--queue",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    copies = list((home / "concepts").rglob("*.png")) + list((home / "sources").glob("*"))
    assert len(copies) == 2 and all(_mode(p) == 0o600 for p in copies), [
        (p, oct(_mode(p))) for p in copies
    ]


def test_existing_world_readable_data_folder_is_closed(tmp_path):
    from store.paths import Home

    root = tmp_path / "old"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    Home.resolve(root)
    assert _mode(root) == 0o700


def test_csv_cells_that_spreadsheets_would_run_are_neutralised(store, tmp_path):
    hostile = ['=HYPERLINK("http://x","y")', "+1+2", "-2+3", "@SUM(A1)"]
    exp = save_experiment(
        store, "=cmd|' /C calc'!A0", small_spec(target_prompts=hostile), queue=True
    )
    with store.session() as s:
        ids = [
            r.id for r in s.exec(select(Run).where(Run.experiment_id == exp.id).order_by(Run.id))
        ]
    update_runs(store, ids[:1], notes="-negative notes", tags="@tag")
    with store.write() as s:
        s.add(Score(run_id=ids[0], metric="clip_t", backbone="b", value=-0.25, scored_text="-x"))
    out = export_runs_csv(store, exp.id, "runs.csv", folder=tmp_path)
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    prompts = [r["target_prompt"] for r in rows]
    assert prompts == ["'" + h for h in hostile]
    assert rows[0]["notes"] == "'-negative notes" and rows[0]["tags"] == "'@tag"
    assert rows[0]["clip_t@b"] == "-0.25"  # a number stays a number, sign and all
    assert rows[0]["scored_text"] == "'-x"
    summary = export_summary_csv(store, exp.id, "target_prompt", "summary.csv", folder=tmp_path)
    with open(summary, newline="", encoding="utf-8") as fh:
        (row,) = list(csv.DictReader(fh))  # the one scored run
    assert row["value"] == "'" + hostile[0] and row["clip_t_mean"] == "-0.25"


def test_filters_treat_percent_and_underscore_literally(store):
    exp = save_experiment(
        store, "e", small_spec(target_prompts=["100% dog", "a_dog", "plain dog"]), queue=True
    )

    def search(text):
        rows, _ = list_runs(store, RunFilter(experiment_id=exp.id, text=text))
        return [r.target_prompt for r in rows]

    assert search("%") == ["100% dog"]
    assert search("_") == ["a_dog"]
    assert search("0% d") == ["100% dog"]
    with store.session() as s:
        ids = [
            r.id for r in s.exec(select(Run).where(Run.experiment_id == exp.id).order_by(Run.id))
        ]
    update_runs(store, ids[:1], tags="50%_off")
    rows, _ = list_runs(store, RunFilter(experiment_id=exp.id, tag="%"))
    assert [r.id for r in rows] == ids[:1]
    rows, _ = list_runs(store, RunFilter(experiment_id=exp.id, tag="x_y"))
    assert rows == []


def test_input_error_names_the_source_image(store, tmp_path):
    with pytest.raises(InputError, match="source image: .*missing.png: no such file"):
        save_experiment(
            store, "e", small_spec(source_image=str(tmp_path / "missing.png"), invert=True)
        )


def test_a_write_refused_by_the_database_gets_a_message(home, capsys, monkeypatch):
    from store.db import Store

    Store(home).close()
    # A read-only connection stands in for a read-only folder (root ignores file modes).
    monkeypatch.setenv("MTP_DB_URL", f"sqlite:///file:{home.db_path}?mode=ro&uri=true")
    code, _, err = run(capsys, "--home", str(home.root), "queue", "pause")
    assert code == 2 and "for writing" in err and "readonly" in err and "Traceback" not in err
