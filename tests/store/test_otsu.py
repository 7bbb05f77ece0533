"""`otsu` is a mask threshold value (stored as NULL on a masked run), never the blank of an
unmasked run: shown, grouped, filtered and exported as `otsu`."""

from __future__ import annotations

import csv

import pytest
from sqlmodel import select

from store.models import OTSU, Run, Score, param_value
from store.queries import InputError, RunFilter, list_runs, save_experiment
from store.report.aggregate import aggregate
from store.report.export import export_runs_csv
from store.sweep.spec import ExperimentSpec

B32 = "ViT-B-32/openai"


def masked_sweep(store):
    spec = ExperimentSpec(
        target_prompts=["a photo of a dog"],
        seeds="0,1",
        start_step="2",
        final_step="10",
        num_steps=20,
        mask_mode="off,auto",
        mask_threshold="0.2,otsu",
    )
    exp = save_experiment(store, "masks", spec, queue=True)
    with store.write() as s:
        runs = list(s.exec(select(Run).where(Run.experiment_id == exp.id).order_by(Run.id)))
        for r in runs:
            r.status = "done"
            s.add(r)
            # CLIP-T by kind: baseline 0.30, mask off 0.20, threshold 0.2 0.22, otsu 0.26 (+ seed)
            kind = (
                "base"
                if r.is_baseline
                else "off"
                if r.mask_mode == "off"
                else "otsu"
                if r.mask_threshold is None
                else "0.2"
            )
            value = {"base": 0.30, "off": 0.20, "0.2": 0.22, "otsu": 0.26}[kind] + 0.01 * r.seed
            s.add(Score(run_id=r.id, metric="clip_t", backbone=B32, value=value))
    return exp.id, runs


def test_otsu_is_grouped_apart_from_unmasked_runs(store):
    exp_id, runs = masked_sweep(store)
    assert len(runs) == 2 * 4  # per seed: baseline, mask off, 0.2, otsu
    rows = aggregate(store, exp_id, "mask_threshold")
    by_label = {r.label: r for r in rows}
    assert list(by_label) == ["baseline", "-", "0.2", "otsu"]
    assert by_label["otsu"].value == OTSU
    assert by_label["otsu"].metrics["clip_t"].mean == pytest.approx(0.265)  # (0.26 + 0.27) / 2
    assert by_label["-"].metrics["clip_t"].mean == pytest.approx(0.205)
    # the paired column against otsu names it
    rows = aggregate(store, exp_id, "mask_threshold", versus="otsu")
    assert rows.reference == "otsu"
    assert {r.label: r for r in rows}["0.2"].paired["clip_t"].mean == pytest.approx(0.22 - 0.26)


def test_otsu_is_shown_filtered_and_exported(store, tmp_path):
    exp_id, runs = masked_sweep(store)
    otsu = [r for r in runs if r.mask_mode != "off" and r.mask_threshold is None]
    off = [r for r in runs if r.mask_mode == "off" and not r.is_baseline]
    assert [param_value(r, "mask_threshold") for r in otsu] == [OTSU, OTSU]
    assert {param_value(r, "mask_threshold") for r in off} == {None}
    got, total = list_runs(store, RunFilter(experiment_id=exp_id, equals={"mask_threshold": OTSU}))
    assert total == 2 and {r.id for r in got} == {r.id for r in otsu}
    got, total = list_runs(store, RunFilter(experiment_id=exp_id, equals={"mask_threshold": "0.2"}))
    assert total == 2 and all(r.mask_threshold == pytest.approx(0.2) for r in got)
    with pytest.raises(InputError, match="number or otsu"):
        list_runs(store, RunFilter(experiment_id=exp_id, equals={"mask_threshold": "high"}))
    out = export_runs_csv(store, exp_id, "r.csv", folder=tmp_path)
    with open(out, newline="") as fh:
        cells = {int(line["id"]): line["mask_threshold"] for line in csv.DictReader(fh)}
    assert all(cells[r.id] == "otsu" for r in otsu)
    assert all(cells[r.id] == "" for r in off)
    assert {cells[r.id] for r in runs if r.mask_threshold is not None} == {"0.2"}


def test_otsu_in_the_runs_filter_grammar_the_browser_and_mtp_show(store, capsys):
    from tui.cli.main import main
    from tui.screens.runs import parse_filter

    exp_id, runs = masked_sweep(store)
    otsu = {r.id for r in runs if r.mask_mode != "off" and r.mask_threshold is None}
    for text in ("mask_threshold=otsu", "thr=OTSU"):
        got, total = list_runs(store, parse_filter(text, exp_id))
        assert total == 2 and {r.id for r in got} == otsu
    got, total = list_runs(store, parse_filter("thr!=otsu mask!=off", exp_id))
    assert total == 2 and all(r.mask_threshold == pytest.approx(0.2) for r in got)
    assert parse_filter("mask_threshold=0.2").equals == {"mask_threshold": 0.2}
    run = next(r for r in runs if r.mask_mode != "off" and r.mask_threshold is None)
    assert main(["--home", str(store.home.root), "show", str(run.id), "--no-image"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("mask_threshold"))
    assert line.split() == ["mask_threshold", "otsu"]


def test_grid_labels_otsu(store):
    from store.report.grid_plan import plan_grid

    exp_id, _ = masked_sweep(store)
    plan = plan_grid(store, exp_id, "mask_threshold", pins={"mask_mode": "auto"})
    assert [plan.y.label(k) for k in plan.y.values] == ["0.2", "otsu"]


def test_run_detail_shows_otsu(store):
    from rich.console import Console

    from tui.screens.run_detail import params_table

    _exp_id, runs = masked_sweep(store)
    run = next(r for r in runs if r.mask_mode != "off" and r.mask_threshold is None)
    console = Console(width=100, record=True)
    console.print(params_table(run, {}))
    line = next(x for x in console.export_text().splitlines() if "mask_threshold" in x)
    assert line.split() == ["mask_threshold", "otsu"]
