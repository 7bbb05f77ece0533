"""A real-image source on SDXL with an inversion guidance, driven as a new user would: from the
sweep builder, and from `mtp experiment create` -> `mtp-engine --once` -> `mtp runs` / export."""

from __future__ import annotations

import csv
import subprocess
import sys

from sqlmodel import select

from store.models import Experiment, Run
from tests.tui import SIZE, wait_for, write_png
from tui.app import MtpApp
from tui.cli.main import main as mtp


async def test_sweep_builder_inverts_an_image_at_two_guidances(store, tmp_path):
    image = write_png(tmp_path / "corgi.png", size=64)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await wait_for(
            pilot,
            lambda: type(app.screen).__name__ == "SweepScreen" and app.screen._ready,
            what="sweep screen",
        )
        sweep = app.screen
        assert any("better-behaved" in str(w.content) for w in sweep.query(".field-info"))
        assert sweep.query_one("#input-inversion_guidance").value == "1"
        sweep.query_one("#input-name").value = "sdxl inversion"
        sweep.query_one("#input-model").value = "tiny-sdxl"  # built under home/models by any engine
        sweep.query_one("#input-num_steps").value = "10"
        sweep.query_one("#input-seeds").value = "0"
        sweep.query_one("#input-final_step").value = "end"
        field = sweep.query_one("#field-inversion_guidance")

        # Two values without an image: refused at the field.
        sweep.query_one("#input-inversion_guidance").value = "1,7.5"
        await wait_for(pilot, lambda: field.has_class("invalid"), what="needs an image")
        assert "image to invert" in str(field.query_one(".field-info").content)

        sweep.query_one("#input-source_image").value = str(image)
        # 1 prompt x 1 seed x 2 inversion guidances x (baseline + 1 control)
        await wait_for(
            pilot, lambda: sweep.last_count == 4 and not field.has_class("invalid"), what="4 runs"
        )
        info = str(field.query_one(".field-info").content)
        assert "1.0" in info and "7.5" in info

        sweep.query_one("#input-inversion_guidance").value = "0.5"
        await wait_for(pilot, lambda: field.has_class("invalid"), what="below 1")
        await pilot.press("ctrl+r")
        await pilot.pause(0.5)
        assert type(app.screen).__name__ == "SweepScreen"
        with store.session() as s:
            assert s.exec(select(Experiment)).all() == []

        sweep.query_one("#input-inversion_guidance").value = "1,7.5"
        await wait_for(pilot, lambda: sweep.last_count == 4, what="4 runs again")
        await pilot.press("ctrl+r")
        await wait_for(
            pilot, lambda: type(app.screen).__name__ == "RunsScreen", what="runs browser"
        )
    with store.session() as s:
        runs = list(s.exec(select(Run)))
    assert len(runs) == 4 and all(r.invert for r in runs)
    # The image was checked and copied into the data folder when the sweep was queued.
    assert len({r.source_image for r in runs}) == 1
    assert (store.home.root / runs[0].source_image).read_bytes() == image.read_bytes()
    assert sorted(r.inversion_guidance for r in runs) == [1.0, 1.0, 7.5, 7.5]
    assert len({r.group_key for r in runs}) == 2


def test_cli_creates_runs_and_reports_an_inverted_sdxl_experiment(
    capsys, home, tmp_path, tiny_sdxl_dir, reference_image, monkeypatch
):
    root = str(home.root)
    monkeypatch.chdir(reference_image.parent)  # a relative image path, as typed in a shell
    argv = [
        "--home",
        root,
        "experiment",
        "create",
        "inv",
        "--model",
        str(tiny_sdxl_dir),
        "--source-prompt",
        "a photo of a corgi",
        "--source-image",
        reference_image.name,
        "--invert",
        "--inversion-guidance",
        "7.5",
        "--prompt",
        "a corgi on the beach",
        "--steps",
        "3",
        "--size",
        "64",
        "--seeds",
        "0",
        "--start-step",
        "1",
        "--queue",
    ]
    assert mtp(argv) == 0
    assert "2 runs, queued" in capsys.readouterr().out

    engine = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "--home",
            root,
            "--device",
            "cpu",
            "--once",
            "--no-score",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert engine.returncode == 0, engine.stderr[-2000:]

    assert mtp(["--home", root, "runs", "inv", "--status", "done"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 runs match") and "inversion_guidance=7.5" in out
    assert mtp(["--home", root, "export", "runs", "inv", "--csv", str(tmp_path / "runs.csv")]) == 0
    with open(tmp_path / "runs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["invert"], float(r["inversion_guidance"])) for r in rows] == [("1", 7.5)] * 2
    # The source image was checked and copied into the data folder when the experiment was made.
    assert len({r["source_image"] for r in rows}) == 1 and rows[0]["source_image"].startswith(
        "sources/"
    )
    assert (home.root / rows[0]["source_image"]).read_bytes() == reference_image.read_bytes()
    assert all(r["source_image_path"] for r in rows)


def test_cli_refuses_bad_inversion_input_and_writes_nothing(
    capsys, home, tmp_path, reference_image
):
    root = str(home.root)
    base = ["--home", root, "experiment", "create", "bad", "--prompt", "a dog", "--queue"]
    cases = [
        (["--invert"], "source_image: inverting needs an image"),
        (
            ["--source-image", str(reference_image), "--inversion-guidance", "0.5"],
            "inversion_guidance",
        ),
        (["--inversion-guidance", "1,7.5"], "image to invert"),
        (["--source-image", str(tmp_path / "missing.png")], "source image"),
    ]
    for extra, message in cases:
        assert mtp(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err, (extra, err)
    assert mtp(["--home", root, "experiment", "list"]) == 0
    assert capsys.readouterr().out.strip() == ""
