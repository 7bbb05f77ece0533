"""The runs filter grammar (runs browser `/` and `mtp runs --where`): comparisons, `end`,
`otsu`, the shown column headers and scores; anything unreadable is an error with a caret."""

from __future__ import annotations

import pytest

from store.queries import RunFilter, list_runs, save_experiment
from store.runfilter import FilterError, parse_filter
from store.sweep.spec import ExperimentSpec, controlled_steps
from tests.tui import add_scores


def seeded(store):
    spec = ExperimentSpec(
        model="org/model",
        num_steps=20,
        target_prompts=["a dog on the beach"],
        seeds="0",
        layers="decoder",
        start_step="4",
        final_step="5,10,end",
        mask_mode="off,auto",
        mask_threshold="0.5,otsu",
        baseline=False,
    )
    exp = save_experiment(store, "filters", spec, queue=True)
    add_scores(store, exp.id)
    return exp


def ids(store, text, exp):
    rows, _ = list_runs(store, parse_filter(text, exp.id), limit=1000)
    return rows


def test_comparisons_end_otsu_headers_and_scores_select_the_right_runs(store):
    exp = seeded(store)
    every, _ = list_runs(store, RunFilter(experiment_id=exp.id), limit=1000)
    assert len(every) == 3 * (1 + 2)  # mask off: one threshold-less run; auto: 0.5 and otsu
    assert {r.final_step for r in ids(store, "final_step>5", exp)} == {10, 20}
    assert {r.final_step for r in ids(store, "final>=10", exp)} == {10, 20}
    assert {r.final_step for r in ids(store, "final_step=end", exp)} == {20}
    assert {r.final_step for r in ids(store, "final<end", exp)} == {5, 10}
    otsu = ids(store, "mask_threshold=otsu", exp)
    assert otsu and all(r.mask_mode != "off" and r.mask_threshold is None for r in otsu)
    assert len(otsu) == 3
    assert {r.mask_threshold for r in ids(store, "thr=0.5", exp)} == {0.5}
    not_otsu = ids(store, "thr!=otsu", exp)
    assert len(not_otsu) == len(every) - 3
    assert {r.mask_mode for r in ids(store, "mask=auto", exp)} == {"auto"}
    assert ids(store, "skip=1 start=4", exp) == every
    best = max(every, key=lambda r: r.id)
    got = ids(store, f"clip_t>{0.2 + (best.id - 0.5) / 1000}", exp)
    assert [r.id for r in got] == [best.id]
    assert len(ids(store, "status!=done", exp)) == 0


@pytest.mark.parametrize(
    "text, pos, message",
    [
        ("final_step>>5", 11, "not an operator"),
        ("nope>3", 0, "unknown field"),
        ("final_step>five", 11, "whole number"),
        ("final_step>", 11, "needs a value"),
        ("seed=1 =3", 7, "FIELD=VALUE"),
        ("layers>decoder", 6, "is text"),
        ("thr>otsu", 4, "otsu is compared with = or !="),
        ('"on the beach', 0, "never closed"),
    ],
)
def test_unreadable_filters_are_errors_with_a_caret(text, pos, message):
    with pytest.raises(FilterError) as err:
        parse_filter(text)
    assert err.value.pos == pos and message in str(err.value)
    lines = str(err.value).splitlines()
    assert lines[1].strip() == text and lines[2].index("^") - 2 == pos


def test_words_without_operators_still_search():
    f = parse_filter("status=failed corgi 'on the beach'")
    assert list(f.statuses) == ["failed"] and f.text == "corgi on the beach"


def test_every_shown_column_header_is_a_filter_name():
    from tui.screens.runs import COLUMNS

    for _key, header, _ in COLUMNS:
        if header in ("id", "target prompt"):
            continue
        parse_filter(f"{header}=1" if header not in ("status", "mask", "layers") else f"{header}=x")


@pytest.mark.parametrize(
    "start, final, skip, steps, text",
    [
        (2, 4, 1, 10, "steps 2-3 of 10"),
        (2, 3, 1, 10, "step 2 of 10"),
        (2, 9, 2, 10, "steps 2-8 every 2 of 10"),
        (4, 4, 1, 10, "no steps controlled of 10"),
        (0, 50, 1, 50, "steps 0-49 of 50"),
    ],
)
def test_one_notation_for_the_controlled_steps(start, final, skip, steps, text):
    assert controlled_steps(start, final, skip, steps) == text


def test_cli_runs_filters_prints_the_sort_score_and_the_controlled_steps(capsys, home):
    from store.db import Store
    from tui.cli.main import main

    store = Store(home)
    exp = seeded(store)
    root = str(home.root)
    code = main(
        ["--home", root, "runs", str(exp.id), "--where", "final_step>5", "--sort", "score:clip_t"]
    )
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("6 runs match")
    lines = out.splitlines()[1:]
    values = [float(line.split("clip_t=")[1].split()[0]) for line in lines]
    assert len(values) == 6 and values == sorted(values)  # the order it sorted by, printed
    assert "steps 4-9 of 20" in out and "..10" not in out
    code = main(["--home", root, "runs", str(exp.id), "--where", "final_step>>5"])
    err = capsys.readouterr().err
    assert code == 2 and "^" in err and "Traceback" not in err


def test_csv_says_the_last_controlled_step(store, tmp_path):
    import csv

    from store.report.export import export_runs_csv

    exp = seeded(store)
    path = export_runs_csv(store, exp.id, tmp_path / "runs.csv", folder=tmp_path)
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["final_step"], r["last_controlled_step"]) for r in rows} == {
        ("5", "4"),
        ("10", "9"),
        ("20", "19"),
    }
