"""`mtp show RUN` prints a run's images, scores and parameters outside the TUI."""

from __future__ import annotations

from tests.tui import add_scores, seed_experiment, write_png
from tui.cli.main import main


def test_show_prints_image_scores_and_params(store, capsys, monkeypatch):
    exp = seed_experiment(store)
    runs = add_scores(store, exp.id)
    run = runs[1]
    write_png(store.home.run_dir(run.id) / "target.png")
    from store.models import Run

    with store.write() as s:
        r = s.get(Run, run.id)
        r.image_path = f"artifacts/run-{run.id}/target.png"
        s.add(r)
    argv = ["--home", str(store.home.root), "show", str(run.id), "--width", "8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # Not a terminal (captured): no image escapes at all, the file's path instead.
    assert "\x1b" not in out and "not drawn: the output is not a terminal" in out
    assert f"run-{run.id}/target.png" in out
    assert "no image recorded" in out  # the source was never written
    assert "clip_t" in out and "final_step" in out

    # On a terminal (inside tmux: coloured blocks) the target is drawn.
    import sys

    monkeypatch.setenv("TMUX", "1")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "\x1b[48;2;200;120;40m" in out


def test_show_unknown_run_fails(store, capsys):
    assert main(["--home", str(store.home.root), "show", "424242", "--no-image"]) == 1
    assert "does not exist" in capsys.readouterr().err
