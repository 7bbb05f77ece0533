"""The `mtp` headless commands, run in-process through tui.cli.main."""
import numpy as np
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
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    code, out, _ = run(capsys, "--home", str(home.root), "concept", "add", "corgi", "--token", "<new1>",
                       "--class-word", "dog", "--image", str(img), "--model", "org/model")
    assert code == 0 and "1 reference images" in out
    code, out, _ = run(capsys, "--home", str(home.root), "experiment", "create", "fs", "--concept", "corgi",
                       "--prompt", "a <new1> dog on the beach", "--final-step", "20,25,end", "--seeds", "0,1",
                       "--dry-run")
    assert code == 0 and out.strip() == "8 runs"
    code, out, _ = run(capsys, "--home", str(home.root), "experiment", "create", "fs", "--concept", "corgi",
                       "--prompt", "a <new1> dog on the beach", "--final-step", "20,25,end", "--seeds", "0,1",
                       "--queue")
    assert code == 0 and "8 runs, queued" in out
    code, out, _ = run(capsys, "--home", str(home.root), "runs", "fs", "--where", "final_step=25")
    assert code == 0 and out.startswith("2 runs match")
    code, out, _ = run(capsys, "--home", str(home.root), "experiment", "list")
    assert "0/8 done" in out


def test_bad_input_exits_2_with_the_field_and_writes_nothing(capsys, home):
    code, _, err = run(capsys, "--home", str(home.root), "experiment", "create", "bad", "--prompt", "a dog",
                       "--start-step", "30", "--final-step", "20", "--queue")
    assert code == 2 and "start_step" in err and "final step 20" in err
    code, out, _ = run(capsys, "--home", str(home.root), "experiment", "list")
    assert out.strip() == ""
    code, _, err = run(capsys, "--home", str(home.root), "runs", "nope")
    assert code == 2 and "no experiment 'nope'" in err
    code, _, err = run(capsys, "--home", str(home.root), "concept", "add", "m", "--model", "/no/such/folder")
    assert code == 2 and "/no/such/folder does not exist" in err
