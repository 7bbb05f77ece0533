"""The `mtp` headless commands, run in-process through tui.cli.main."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tui.cli.main import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for command in ("init", "concept", "experiment", "runs", "demo"):
        assert command in out


def test_concept_experiment_runs_flow(capsys, home, tmp_path):
    img = tmp_path / "ref.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    code, out, _ = run(
        capsys,
        "--home",
        str(home.root),
        "concept",
        "add",
        "corgi",
        "--token",
        "<new1>",
        "--class-word",
        "dog",
        "--image",
        str(img),
        "--model",
        "org/model",
    )
    assert code == 0 and "1 reference images" in out
    code, out, _ = run(
        capsys,
        "--home",
        str(home.root),
        "experiment",
        "create",
        "fs",
        "--concept",
        "corgi",
        "--prompt",
        "a <new1> dog on the beach",
        "--final-step",
        "20,25,end",
        "--seeds",
        "0,1",
        "--dry-run",
    )
    assert code == 0 and out.strip() == "8 runs"
    code, out, _ = run(
        capsys,
        "--home",
        str(home.root),
        "experiment",
        "create",
        "fs",
        "--concept",
        "corgi",
        "--prompt",
        "a <new1> dog on the beach",
        "--final-step",
        "20,25,end",
        "--seeds",
        "0,1",
        "--queue",
    )
    assert code == 0 and "8 runs, queued" in out
    code, out, _ = run(capsys, "--home", str(home.root), "runs", "fs", "--where", "final_step=25")
    assert code == 0 and out.startswith("2 runs match")
    code, out, _ = run(capsys, "--home", str(home.root), "experiment", "list")
    assert "0/8 done" in out


def test_bad_input_exits_2_with_the_field_and_writes_nothing(capsys, home):
    code, _, err = run(
        capsys,
        "--home",
        str(home.root),
        "experiment",
        "create",
        "bad",
        "--prompt",
        "a dog",
        "--start-step",
        "30",
        "--final-step",
        "20",
        "--queue",
    )
    assert code == 2 and "start_step" in err and "final step 20" in err
    code, out, _ = run(capsys, "--home", str(home.root), "experiment", "list")
    assert out.strip() == ""
    code, _, err = run(capsys, "--home", str(home.root), "runs", "nope")
    assert code == 2 and "no experiment 'nope'" in err
    code, _, err = run(
        capsys, "--home", str(home.root), "concept", "add", "m", "--model", "/no/such/folder"
    )
    assert code == 2 and "/no/such/folder does not exist" in err


def test_demo_writes_into_its_own_folder_and_mtp_demo_addresses_it(capsys, home):
    code, out, _ = run(capsys, "demo")
    assert code == 0 and str(home.root / "demo") in out
    assert (home.root / "demo" / "mtp.db").is_file()
    # The real data folder stays clean: a listing there says where it looked and creates nothing.
    code, out, err = run(capsys, "experiment", "list")
    assert code == 2 and f"no mtp database in {home.root}" in err and "nothing was created" in err
    assert not (home.root / "mtp.db").exists()
    code, out, _ = run(capsys, "--demo", "experiment", "list")
    assert code == 0 and "demo: final step" in out
    # One --demo, one meaning, before or after the subcommand.
    assert run(capsys, "experiment", "list", "--demo")[1] == out


def test_demo_is_one_rule_for_every_entry_point_even_under_mtp_db_url(capsys, home, monkeypatch):
    """An exported MTP_DB_URL (README's several-hosts setup) does not reach the demo: `mtp`,
    `mtp-tui` and `mtp-engine` all use the demo folder's own SQLite file, and nothing creates a
    database it then refuses."""
    import argparse

    from store.entrypoint import apply_rule

    elsewhere = home.root / "other.db"
    monkeypatch.setenv("MTP_DB_URL", f"sqlite:///{elsewhere}")
    assert run(capsys, "demo")[0] == 0
    code, out, err = run(capsys, "--demo", "experiment", "list")
    assert code == 0 and "demo: final step" in out, err
    where = apply_rule(None, None, True)
    assert where.db_url is None and where.home == (home.root / "demo").resolve()
    # the engine takes the same rule: it drains the demo queue instead of refusing
    from engine.cli import build_parser

    args = build_parser().parse_args(["--demo", "--once", "--backend", "fake"])
    assert isinstance(args, argparse.Namespace) and args.demo
    monkeypatch.setenv("MTP_DB_URL", f"sqlite:///{elsewhere}")
    from engine.cli import main as engine_main

    assert engine_main(["--demo", "--once", "--backend", "fake"]) == 0
    assert not elsewhere.exists()
    code, out, _ = run(capsys, "--demo", "runs", "--status", "queued")
    assert code == 0 and out.startswith("0 runs match")


def test_a_database_that_is_refused_is_not_left_behind(capsys, home, monkeypatch):
    monkeypatch.delenv("MTP_DB_URL", raising=False)  # --db exports it; undone after the test
    run(capsys, "init")
    stray = home.root.parent / "stray.db"
    code, _, err = run(capsys, "--db", f"sqlite:///{stray}", "init")
    assert code == 2 and "belongs to another database" in err
    assert not stray.exists() and not Path(f"{stray}-wal").exists()


def test_experiment_create_with_a_concept_uses_its_class_word_as_source(capsys, home):
    from store.db import Store
    from store.queries import experiment_by_ref
    from store.sweep.spec import ExperimentSpec

    run(
        capsys,
        "concept",
        "add",
        "corgi",
        "--token",
        "sks",
        "--class-word",
        "corgi",
        "--model",
        "org/model",
    )
    code, _, err = run(
        capsys,
        "experiment",
        "create",
        "fs",
        "--concept",
        "corgi",
        "--prompt",
        "a photo of sks corgi on the beach",
        "--mask-mode",
        "auto",
        "--mask-words",
        "corgi",
    )
    assert code == 0, err
    store = Store(home)
    try:
        spec = ExperimentSpec.from_json(experiment_by_ref(store, "fs").spec_json)
    finally:
        store.close()
    assert spec.source_prompt == "a photo of a corgi"
    code, _, err = run(
        capsys,
        "experiment",
        "create",
        "bad",
        "--concept",
        "corgi",
        "--prompt",
        "a photo of sks corgi on the beach",
        "--mask-mode",
        "auto",
        "--mask-words",
        "beach",
    )
    assert code == 2 and "source prompt" in err


def test_experiment_delete_and_archive(capsys, home):
    run(capsys, "experiment", "create", "a", "--model", "org/model", "--queue")
    run(capsys, "experiment", "create", "b", "--model", "org/model", "--queue")
    code, _, err = run(capsys, "experiment", "delete", "a")  # stdin is not a terminal here
    assert code == 2 and "--yes" in err
    code, out, _ = run(capsys, "experiment", "delete", "a", "--yes")
    assert code == 0 and "deleted" in out
    code, out, _ = run(capsys, "experiment", "archive", "b")
    assert code == 0 and "archived" in out
    code, out, _ = run(capsys, "experiment", "list")
    assert " a " not in out and " b " not in out
    code, out, _ = run(capsys, "experiment", "list", "--archived")
    assert "archived" in out and " a " not in out
    code, out, _ = run(capsys, "experiment", "archive", "b", "--undo")
    assert code == 0 and "done" in out


@pytest.mark.subprocess
def test_output_into_a_closed_pipe_is_not_a_traceback(home, tmp_path):
    import subprocess
    import sys

    # 4000 runs print ~300 kB: far more than a pipe holds once `head` has gone.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tui.cli.main",
            "experiment",
            "create",
            "big",
            "--model",
            "org/m",
            "--seeds",
            "0-1999",
            "--queue",
        ],
        check=True,
        capture_output=True,
    )
    res = subprocess.run(
        f"{sys.executable} -m tui.cli.main runs --limit 100000 | head -1",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr
