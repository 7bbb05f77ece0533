"""The grid plan's one-pass placement (fast on large experiments) checked cell by cell against
the rule it implements, enumerated per cell: a cell shows the first run in sweep order that
fits it (pins, panel, row, column), preferring one with an image; ``ambiguous`` counts the
extra fitting runs; sources are shown along rows or columns only where every cell of the line
shares one source pass.
The data set mixes mask on/off, baselines, duplicated cells, missing images and split sources."""

from __future__ import annotations

import pytest
from sqlmodel import select

from store.models import Run
from store.report.grid_plan import BASELINE, CONTROL_AXES, _load_runs, applies, key_of, plan_grid
from tests.tui import seed_experiment


@pytest.fixture
def varied(store) -> int:
    exp = seed_experiment(
        store,
        "varied",
        seeds="0,1,2",
        layers="decoder,encoder",
        start_step="2,4",
        final_step="10,15",
        mask_mode="auto",
        mask_threshold="0.2,0.4",
    )
    with store.write() as s:
        runs = list(s.exec(select(Run).where(Run.experiment_id == exp.id).order_by(Run.grid_index)))
        top = max(r.grid_index for r in runs)
        for i, run in enumerate(runs):
            run.status = "done"
            run.image_path = None if i % 7 == 3 else f"runs/{run.id}/target.png"
            run.source_image_path = None if i % 5 == 1 else f"runs/{run.group_key}/source.png"
            if i % 11 == 4:
                run.group_key = f"split-{i}"  # a cell whose source pass differs from its row's
            s.add(run)
            if not run.is_baseline and i % 6 == 0:
                # The same settings with the mask off: mask details do not apply to it.
                s.add(
                    _copy(
                        run, grid_index=top + 1 + i, mask_mode="off", image_path=f"runs/off{i}.png"
                    )
                )
            if i % 9 == 2:
                # A second run for the same cell, later in sweep order, sometimes the only image.
                s.add(
                    _copy(
                        run,
                        grid_index=run.grid_index,
                        image_path=None if i % 2 else f"runs/dup{i}.png",
                    )
                )
    return exp.id


def _copy(run: Run, **changes) -> Run:
    cols = {c: getattr(run, c) for c in Run.model_fields if c != "id"}
    cols.update(changes)
    return Run(**cols)


def expected_cells(runs, plan, panel) -> tuple[dict, int]:
    """Per cell, the fitting runs enumerated in sweep order and the one the rule picks."""
    x, y, z = plan.x.name, plan.y.name, plan.z.name if plan.z else None
    each = plan.seeds == "each"
    row_mode = any(k[0] == "baseline" for k in plan.row_keys)
    col_mode = BASELINE in plan.col_keys

    def place(r):
        seed = (r["seed"],) if each else ()
        if r["is_baseline"]:
            if row_mode:
                # both axes control settings: the baseline's own column, labelled as such
                return BASELINE + seed, (
                    "value",
                    key_of(x, r),
                ) if x not in CONTROL_AXES else BASELINE
            if col_mode:
                return ("value", key_of(y, r)) + seed, BASELINE
            return None
        if not (applies(x, r) and applies(y, r)):
            return None
        return ("value", key_of(y, r)) + seed, ("value", key_of(x, r))

    fixed = dict(plan.pins, **({z: panel.z} if z else {}))
    cells, extra = {}, 0
    for row in plan.row_keys:
        for col in plan.col_keys:
            fits = [
                r
                for r in runs
                if all(not applies(a, r) or key_of(a, r) == k for a, k in fixed.items())
                and place(r) == (row, col)
            ]
            if fits:
                extra += len(fits) - 1
                cells[(row, col)] = next((r for r in fits if r["image_path"]), fits[0])
    return cells, extra


OPTIONS = [
    ("layers", {}),
    ("layers", dict(x="final_step", z="start_step", pins={"seed": "1", "mask_threshold": "0.4"})),
    ("mask_threshold", dict(x="layers")),
    ("mask_threshold", dict(x="seed", z="final_step")),
    ("final_step", dict(x="layers", seeds="each", pins={"target_prompt": "a dog in snow"})),
    ("seed", dict(x="target_prompt")),
    ("target_prompt", dict(x="seed", z="mask_threshold")),
    ("start_step", dict(x="mask_threshold", pins={"mask_mode": "off"})),
]


@pytest.mark.parametrize("y,options", OPTIONS)
def test_every_cell_holds_the_run_the_rule_picks(store, varied, y, options):
    runs = _load_runs(store, varied)
    plan = plan_grid(store, varied, y, **options)
    total = 0
    for panel in plan.panels:
        cells, extra = expected_cells(runs, plan, panel)
        assert {k: r["id"] for k, r in panel.cells.items()} == {
            k: r["id"] for k, r in cells.items()
        }
        total += extra
    assert plan.ambiguous == total

    def shared(by_row: bool) -> bool:
        return all(
            len(
                {
                    r["group_key"]
                    for (row, col), r in p.cells.items()
                    if (row if by_row else col) == k
                }
            )
            <= 1
            for p in plan.panels
            for k in (plan.row_keys if by_row else plan.col_keys)
        )

    mode = "column" if shared(True) else "row" if shared(False) else "none"
    assert plan.source_mode == mode
    for panel in plan.panels:
        want = {}
        if mode != "none":
            lines, across = (
                (plan.row_keys, plan.col_keys)
                if mode == "column"
                else (plan.col_keys, plan.row_keys)
            )
            for k in lines:
                members = [panel.cells.get((k, o) if mode == "column" else (o, k)) for o in across]
                members = [m for m in members if m]
                first = next((m for m in members if m["source_image_path"]), None)
                # no member has the source image: another run of the same source pass shows it,
                # else the first member says why it has none
                donors = [
                    r
                    for m in members
                    for r in runs
                    if r["group_key"] == m["group_key"] and r["source_image_path"]
                ]
                first = first or (donors[0] if donors else None) or (members or [None])[0]
                if first:
                    want[k] = first["id"]
        assert {k: r["id"] for k, r in panel.sources.items()} == want


def test_the_data_set_exercises_duplicates_and_source_modes(store, varied):
    plans = [plan_grid(store, varied, y, **o) for y, o in OPTIONS]
    assert sum(p.ambiguous > 0 for p in plans) >= 2
    assert len({p.source_mode for p in plans}) >= 2
    assert any(
        r["image_path"] is None for p in plans for panel in p.panels for r in panel.cells.values()
    )
