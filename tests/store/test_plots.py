"""Trade-off plots (PNG and terminal) and the annotated image grid."""

from __future__ import annotations

import math
import sys

import pytest
from PIL import Image

from store.models import Run
from store.report.aggregate import aggregate
from store.report.export import export_grid_png, export_plot_png
from store.report.grid_image import render_grid
from store.report.plots import draw_tradeoff, render_tradeoff_png, tradeoff_points, tradeoff_text
from tests.store.test_aggregate import add_runs, make_experiment, seed_sweep


@pytest.mark.subprocess
def test_store_modules_stay_light():
    import subprocess

    code = (
        "import sys, store.report.aggregate, store.report.export, store.report.plots, store.report.grid_image, tui.cli.export;"
        "bad = [m for m in ('torch', 'matplotlib', 'open_clip', 'transformers') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_plot_png_size_points_and_labels(store, tmp_path):
    exp_id = seed_sweep(store)
    rows = aggregate(store, exp_id, "final_step")
    info = render_tradeoff_png(rows, tmp_path / "p.png", by="final_step", size=(6, 4), dpi=50)
    with Image.open(tmp_path / "p.png") as im:
        assert im.size == (300, 200) == (info.width, info.height)
    assert info.labels == ["baseline", "25", "10", "40"]
    assert info.x_metric == "clip_t" and info.y_metric == "clip_i_ref"
    assert [p.label for p in info.sweep if p.pareto] == ["25", "10"]
    assert info.baseline.x == pytest.approx(0.33) and info.baseline.y == pytest.approx(0.70)
    p25 = info.sweep[0]
    assert p25.xerr == pytest.approx(rows[1].metrics["clip_t"].sem)


def test_export_plot_png(store, tmp_path):
    out = export_plot_png(store, seed_sweep(store), "final_step", "plot", folder=tmp_path)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (700, 500)


def test_plot_of_unscored_experiment_still_renders(store, tmp_path):
    exp_id, _ = make_experiment(store, "unscored")
    info = render_tradeoff_png([], tmp_path / "e.png")
    assert info.points == [] and (tmp_path / "e.png").stat().st_size > 0
    assert aggregate(store, exp_id, "final_step") == []


def test_terminal_plot(store):
    rows = aggregate(store, seed_sweep(store), "final_step")
    text = tradeoff_text(rows, by="final_step", width=70, height=20)
    lines = text.splitlines()
    assert len(lines) == 20 and max(len(line) for line in lines) <= 70
    assert "baseline" in text and "\x1b[" not in text
    for label in ("25", "10", "40"):
        assert label in text


def test_draw_into_textual_plotext_plot(store):
    textual_plotext = pytest.importorskip("textual_plotext.plot")
    plt = textual_plotext.Plot()
    rows = aggregate(store, seed_sweep(store), "final_step")
    info = draw_tradeoff(plt, rows, by="final_step")
    plt.plotsize(60, 15)
    assert "baseline" in plt.build() and len(info.points) == 4


def _colour(i: int) -> tuple[int, int, int]:
    return (40 * (i % 6) + 10, 30 * (i // 6 % 8) + 10, 200)


def _grid_experiment(store, n_values=3, n_prompts=2, n_seeds=2):
    """Runs with solid-colour target images (colour = run order) and a grey source per seed."""
    exp_id, _ = make_experiment(store, "grid")
    runs, i = [], 0
    for prompt in range(n_prompts):
        for seed in range(n_seeds):
            runs.append(
                dict(
                    is_baseline=True,
                    final_step=0,
                    prompt_index=prompt,
                    seed=seed,
                    target_prompt=f"a photo of a corgi number {prompt}",
                )
            )
            for v in range(n_values):
                runs.append(
                    dict(
                        final_step=10 * (v + 1),
                        prompt_index=prompt,
                        seed=seed,
                        target_prompt=f"a photo of a corgi number {prompt}",
                    )
                )
    ids = add_runs(store, exp_id, runs, [{} for _ in runs])
    colours = {}
    with store.write() as s:
        for i, run_id in enumerate(ids):
            d = store.home.run_dir(run_id)
            d.mkdir(parents=True)
            Image.new("RGB", (64, 48), _colour(i)).save(d / "target.png")
            Image.new("RGB", (64, 64), (128, 128, 128)).save(d / "source.png")
            run = s.get(Run, run_id)
            run.image_path = str((d / "target.png").relative_to(store.home.root))
            run.source_image_path = str((d / "source.png").relative_to(store.home.root))
            s.add(run)
            colours[run_id] = _colour(i)
    return exp_id, colours


def _centre(image, box):
    x0, y0, x1, y1 = box
    return image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2))


def test_grid_rows_columns_labels_and_pixels(store):
    exp_id, colours = _grid_experiment(store)
    layout = render_grid(store, exp_id, "final_step", thumb=40)
    assert layout.columns == "target_prompt"  # two prompts -> prompts across, seed held at 0
    assert layout.row_labels == ["baseline", "final_step=10", "final_step=20", "final_step=30"]
    assert layout.col_labels == [
        "source",
        "a photo of a corgi number 0",
        "a photo of a corgi number 1",
    ]
    assert len(layout.cells) == 4 * 3 and layout.n_images == 12
    assert layout.truncated_rows == layout.truncated_cols == 0
    w, h = layout.image.size
    assert all(
        0 <= c.box[0] < c.box[2] <= w and 0 <= c.box[1] < c.box[3] <= h for c in layout.cells
    )
    for cell in layout.cells:
        expected = (128, 128, 128) if cell.col == 0 else colours[cell.run_id]
        assert _centre(layout.image, cell.box) == expected
    with store.session() as s:
        for cell in layout.cells[1:]:
            if cell.col:
                run = s.get(Run, cell.run_id)
                assert run.seed == 0 and run.prompt_index == cell.col - 1
                assert (run.is_baseline, run.final_step) == (
                    (True, 0) if cell.row == 0 else (False, 10 * cell.row)
                )


def test_small_images_fill_their_cells(store):
    # 64x48 targets in 200 px cells: enlarged to the cell width, not left as a speck.
    exp_id, colours = _grid_experiment(store, n_values=1, n_prompts=1, n_seeds=1)
    layout = render_grid(store, exp_id, "final_step", thumb=200)
    for cell in layout.cells:
        if cell.col:
            x0, y0, x1, y1 = cell.box
            inset = (
                x0 + 3,
                (y0 + y1) // 2,
            )  # near the left edge, where a centred 64 px image is not
            assert layout.image.getpixel(inset) == colours[cell.run_id]


def test_grid_by_seed_and_missing_images(store):
    exp_id, _ = _grid_experiment(store, n_prompts=1, n_seeds=3)
    with store.write() as s:
        run = s.get(Run, 2)
        run.image_path, run.status = None, "failed"
        s.add(run)
    layout = render_grid(store, exp_id, "final_step", thumb=32)
    assert layout.columns == "seed" and layout.col_labels == [
        "source",
        "seed 0",
        "seed 1",
        "seed 2",
    ]
    assert len(layout.cells) == 4 * 4 and layout.n_images == 15
    missing = next(c for c in layout.cells if c.run_id == 2 and c.col)
    assert not missing.has_image and _centre(layout.image, missing.box) == (225, 225, 225)


def test_grid_caps_cells_and_pixels(store, tmp_path):
    exp_id, _ = _grid_experiment(store, n_values=12, n_prompts=4, n_seeds=1)
    layout = render_grid(store, exp_id, "final_step", max_cells=20, thumb=256)
    assert len(layout.cells) <= 20 and layout.truncated_rows == 13 - 4
    layout = render_grid(store, exp_id, "final_step", max_side=400, thumb=256)
    assert max(layout.image.size) <= 400 and layout.thumb < 256 and layout.truncated_rows > 0
    assert len(layout.cells) == (13 - layout.truncated_rows) * 5
    out = export_grid_png(store, exp_id, "final_step", "g.png", folder=tmp_path, max_side=400)
    with Image.open(out) as im:
        assert max(im.size) <= 400


def test_plot_with_split_baselines_and_undefined_sem(store, tmp_path):
    from tests.store.test_aggregate import unbalanced

    exp_id = unbalanced(store)
    rows = aggregate(store, exp_id, "seed", scale="clipscore")
    out = tmp_path / "p.png"
    info = render_tradeoff_png(rows, out, by="seed")
    # One baseline point per seed, labelled with its seed.
    assert [p.label for p in info.baselines] == ["baseline seed=0", "baseline seed=1"]
    with Image.open(out) as im:
        assert im.size == (info.width, info.height)
    # final_step 20 has one concept: its SEM is undefined and draws no bar (not a fake 0 SEM).
    rows = aggregate(store, exp_id, "final_step")
    point = next(p for p in tradeoff_points(rows).points if p.label == "20")
    assert point.xerr == 0.0 and math.isnan(rows[2].metrics["clip_t"].sem)
    assert "20" in tradeoff_text(rows, by="final_step")
