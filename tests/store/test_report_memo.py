"""Tables and grids kept between results-screen visits (recomputing them made reopening slow):
a kept result is what a fresh computation returns, and it is dropped as soon as runs, scores
or image files change."""

from __future__ import annotations

from PIL import Image
from sqlmodel import select

from store.models import Run, Score
from store.report.aggregate import aggregate
from store.report.grid_image import render_grid
from store.report.memo import cache_for, cached_aggregate, cached_render_grid
from tests.store.test_aggregate import seed_sweep, unbalanced
from tests.store.test_grid_axes import make_axes_sweep


def table(rows) -> list:
    """Everything a reader of an aggregate sees: per row its label, counts, stats, gaps, flags."""
    return [
        (
            r.label,
            r.value,
            r.is_baseline,
            r.n_runs,
            r.n_concepts,
            sorted(r.metrics.items()),
            sorted(r.backbones.items()),
            r.pareto,
            sorted(r.missing.items()),
        )
        for r in rows
    ] + [rows.unit, rows.unit_text, rows.scale, rows.describe()]


def drawn(layout) -> tuple:
    return (
        layout.caption,
        layout.row_labels,
        layout.col_labels,
        layout.pins,
        layout.pin_choices,
        layout.z,
        [(c.row, c.col, c.panel, c.run_id, c.kind, c.has_image, c.box) for c in layout.cells],
        layout.image.tobytes(),
    )


def test_kept_tables_equal_fresh_ones_and_follow_new_scores(store):
    exps = [seed_sweep(store), unbalanced(store)]
    cache = cache_for(store)
    for exp_id in exps:
        for by in ("final_step", "seed", "concept_id"):
            for scale in ("raw", "clipscore"):
                first = cached_aggregate(store, exp_id, by, scale=scale)
                hits = cache.hits
                again = cached_aggregate(store, exp_id, by, scale=scale)
                assert cache.hits == hits + 1
                assert (
                    table(first) == table(again) == table(aggregate(store, exp_id, by, scale=scale))
                )
    # A copy per caller: changing one never reaches the kept table.
    mine = cached_aggregate(store, exps[0], "final_step")
    mine[0].pareto = not mine[0].pareto
    mine.clear()
    assert table(cached_aggregate(store, exps[0], "final_step")) == table(
        aggregate(store, exps[0], "final_step")
    )

    before = table(cached_aggregate(store, exps[0], "final_step"))
    with store.write() as s:
        score = s.exec(
            select(Score)
            .join(Run, Run.id == Score.run_id)
            .where(Run.experiment_id == exps[0], Score.metric == "clip_t", Run.final_step == 25)
        ).first()
        score.value += 0.5
        s.add(score)
    after = table(cached_aggregate(store, exps[0], "final_step"))
    assert after != before and after == table(aggregate(store, exps[0], "final_step"))


def test_kept_grids_equal_fresh_ones_and_follow_runs_and_files(store):
    exp_id = make_axes_sweep(store)
    options = [
        dict(),
        dict(x="final_step", z="start_step", pins={"seed": "1", "mask_threshold": "0.4"}),
        dict(seeds="each"),
        dict(x="seed", pins={"start_step": "4"}),
    ]
    assert (
        cached_render_grid(store, exp_id, "layers", only_cached=True) is None
    )  # nothing drawn yet
    for opts in options:
        kept = cached_render_grid(store, exp_id, "layers", thumb=24, **opts)
        assert drawn(kept) == drawn(render_grid(store, exp_id, "layers", thumb=24, **opts))
        assert cached_render_grid(store, exp_id, "layers", thumb=24, **opts) is kept
        assert (
            cached_render_grid(store, exp_id, "layers", only_cached=True, thumb=24, **opts) is kept
        )

    # A run finishing (status and image written) is a new grid.
    kept = cached_render_grid(store, exp_id, "layers", thumb=24)
    shown = next(c for c in kept.cells if c.kind == "target" and c.has_image)
    with store.write() as s:
        run = s.get(Run, shown.run_id)
        run.image_path, run.status = None, "failed"
        s.add(run)
    fresh = cached_render_grid(store, exp_id, "layers", thumb=24)
    assert fresh is not kept and drawn(fresh) == drawn(
        render_grid(store, exp_id, "layers", thumb=24)
    )
    assert not next(
        c for c in fresh.cells if c.run_id == shown.run_id and c.kind == "target"
    ).has_image

    # An image rewritten on disk (no database write) is redrawn too.
    other = next(c for c in fresh.cells if c.kind == "target" and c.has_image)
    with store.session() as s:
        path = store.home.resolve_artifact(s.get(Run, other.run_id).image_path)
    Image.new("RGB", (20, 20), (1, 2, 3)).save(path)
    redrawn = cached_render_grid(store, exp_id, "layers", thumb=24)
    assert redrawn is not fresh and drawn(redrawn) == drawn(
        render_grid(store, exp_id, "layers", thumb=24)
    )
    x0, y0, x1, y1 = next(
        c for c in redrawn.cells if c.run_id == other.run_id and c.kind == "target"
    ).box
    assert redrawn.image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == (1, 2, 3)


def test_a_result_computed_while_the_store_changed_is_not_reused(store):
    exp_id = seed_sweep(store)
    cache = cache_for(store)

    def compute_during_a_write():
        rows = aggregate(store, exp_id, "final_step")
        with store.write() as s:  # an engine finishing a run meanwhile
            run = s.exec(select(Run).where(Run.experiment_id == exp_id)).first()
            run.status = "failed"
            s.add(run)
        return rows

    cache.get(("test", exp_id), compute_during_a_write)
    assert cache.get(("test", exp_id), None) is None
