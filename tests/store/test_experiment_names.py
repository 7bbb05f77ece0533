"""Experiment names are unique per data folder and can never be confused with ids."""

from __future__ import annotations

import pytest

from store.queries import InputError, duplicate_experiment, experiment_by_ref, save_experiment
from store.sweep.spec import ExperimentSpec
from tui.cli.main import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def spec():
    return ExperimentSpec(model="org/model")


def test_a_second_experiment_with_the_same_name_is_refused(store):
    first = save_experiment(store, "corgi sweep", spec())
    with pytest.raises(InputError, match=rf"exists already \(#{first.id}\)"):
        save_experiment(store, "Corgi Sweep ", spec())
    # Saving the same draft again under its own name is fine.
    again = save_experiment(store, "corgi sweep", spec(), experiment_id=first.id)
    assert again.id == first.id


@pytest.mark.parametrize("name", ["1", "42", "#3", "# x"])
def test_a_name_that_reads_as_an_id_is_refused(store, name):
    with pytest.raises(InputError, match="would read as an experiment id"):
        save_experiment(store, name, spec())


def test_ids_and_names_are_never_confused(store):
    a = save_experiment(store, "alpha", spec())
    b = save_experiment(store, "beta", spec())
    assert experiment_by_ref(store, str(b.id)).id == b.id
    assert experiment_by_ref(store, f"#{a.id}").id == a.id
    assert experiment_by_ref(store, "beta").id == b.id
    assert experiment_by_ref(store, "#999") is None and experiment_by_ref(store, "gamma") is None


def test_duplicates_from_older_data_are_refused_by_name(store):
    from store.models import Experiment

    a = save_experiment(store, "old", spec())
    with store.write() as s:  # as an older version could write them
        s.add(Experiment(name="old", spec_json=spec().to_json()))
    with pytest.raises(InputError, match=rf"2 experiments are named 'old' \(#{a.id}, #\d+\)"):
        experiment_by_ref(store, "old")
    assert experiment_by_ref(store, f"#{a.id}").id == a.id


def test_copies_get_free_names(store):
    a = save_experiment(store, "base", spec())
    assert duplicate_experiment(store, a.id).name == "base (copy)"
    assert duplicate_experiment(store, a.id).name == "base (copy) 2"


def test_cli_refuses_duplicate_and_numeric_names_and_takes_hash_ids(capsys, home):
    root = str(home.root)
    assert run(capsys, "--home", root, "experiment", "create", "a", "--model", "org/m")[0] == 0
    code, _, err = run(capsys, "--home", root, "experiment", "create", "a", "--model", "org/m")
    assert code == 2 and "exists already" in err and "Traceback" not in err
    code, _, err = run(capsys, "--home", root, "experiment", "create", "7", "--model", "org/m")
    assert code == 2 and "would read as an experiment id" in err
    code, out, _ = run(capsys, "--home", root, "runs", "#1")
    assert code == 0


def test_cli_spec_file_problems_are_one_line(capsys, home, tmp_path):
    root = str(home.root)
    bad = tmp_path / "bad.json"
    bad.write_text('{"layers": "decoder",')
    extra = tmp_path / "extra.json"
    extra.write_text('{"layers": "decoder", "finl_step": "end"}')
    good = tmp_path / "good.json"
    good.write_text('{"layers": "decoder", "final_step": "10,end", "model": "org/m"}')
    cases = [
        (tmp_path / "missing.json", "no such file"),
        (bad, "is not valid JSON"),
        (extra, "unknown field 'finl_step'"),
    ]
    for path, message in cases:
        code, out, err = run(
            capsys, "--home", root, "experiment", "create", "s", "--spec", str(path)
        )
        assert code == 2 and message in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, "--home", root, "experiment", "create", "s", "--spec", str(good))
    assert code == 0, err
