"""Image grids with X/Y/Z axes and pinned values, checked on pixels: every run has its own
solid colour, so a cell's centre says which run it shows."""

from __future__ import annotations

import pytest
from PIL import Image
from sqlmodel import select

from store.models import Run
from store.queries import InputError
from store.report.grid_image import MISSING, render_grid
from tests.tui import seed_experiment

PROMPTS = ["a dog on the beach", "a dog in snow"]


def colour(run_id: int) -> tuple[int, int, int]:
    return (run_id % 256, 255 - run_id % 256, 90)


@pytest.fixture
def sweep(store):
    return make_axes_sweep(store)


def make_axes_sweep(store) -> int:
    """Prompts x seeds 0,1,2 x layers x start_step x final_step x mask_threshold (mask auto), every
    run done with a solid image in its own colour and a grey source."""
    exp = seed_experiment(
        store,
        "axes",
        seeds="0,1,2",
        layers="decoder,encoder",
        start_step="2,4",
        final_step="10,15",
        mask_mode="auto",
        mask_threshold="0.2,0.4",
    )
    with store.write() as s:
        runs = list(s.exec(select(Run).where(Run.experiment_id == exp.id)))
        for run in runs:
            d = store.home.run_dir(run.id)
            d.mkdir(parents=True)
            Image.new("RGB", (16, 16), colour(run.id)).save(d / "target.png")
            Image.new("RGB", (16, 16), (128, 128, 128)).save(d / "source.png")
            run.image_path = str((d / "target.png").relative_to(store.home.root))
            run.source_image_path = str((d / "source.png").relative_to(store.home.root))
            run.status = "done"
            s.add(run)
    return exp.id


def centre(layout, cell):
    x0, y0, x1, y1 = cell.box
    return layout.image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2))


def expected_run(store, exp_id, **cols) -> Run:
    with store.session() as s:
        q = select(Run).where(Run.experiment_id == exp_id)
        for k, v in cols.items():
            q = q.where(getattr(Run, k) == v)
        (run,) = s.exec(q).all()
        return run


def test_xyz_grid_shows_the_pinned_runs_and_names_the_pins(store, sweep):
    layout = render_grid(
        store,
        sweep,
        "layers",
        x="final_step",
        z="start_step",
        thumb=24,
        pins={"seed": "1", "target_prompt": "a dog in snow", "mask_threshold": "0.4"},
    )
    assert (layout.by, layout.columns, layout.z) == ("layers", "final_step", "start_step")
    assert layout.pins == {"target_prompt": "a dog in snow", "seed": "1", "mask_threshold": "0.4"}
    assert "pinned: target_prompt=a dog in snow, seed=1, mask_threshold=0.4" in layout.caption_text
    assert "rows: layers, columns: final_step, one panel per start_step" in layout.caption_text
    assert layout.panel_titles == ["start_step=2", "start_step=4"]
    assert layout.row_labels == ["baseline", "layers=decoder", "layers=encoder"]
    # the baseline has its own column, labelled as the baseline (not under final_step=10)
    assert layout.col_labels == ["source", "baseline", "final_step=10", "final_step=15"]
    targets = [c for c in layout.cells if c.kind == "target"]
    assert len(targets) == 2 * 2 * 2 and layout.n_missing == 0
    for cell in targets:
        start = (2, 4)[cell.panel]
        layers = ("decoder", "encoder")[cell.row - 1]
        final = (10, 15)[cell.col - 2]
        run = expected_run(
            store,
            sweep,
            is_baseline=False,
            seed=1,
            prompt_index=1,
            mask_threshold=0.4,
            layers=layers,
            start_step=start,
            final_step=final,
        )
        assert cell.run_id == run.id and centre(layout, cell) == colour(run.id)
    # The baseline row is the pinned seed and prompt's baseline (control settings do not apply to it).
    base = expected_run(store, sweep, is_baseline=True, seed=1, prompt_index=1)
    baseline_cells = [c for c in layout.cells if c.kind == "baseline"]
    assert {c.run_id for c in baseline_cells} == {base.id}
    assert {(c.row, c.col) for c in baseline_cells} == {(0, 1)}  # baseline row x baseline column
    assert all(centre(layout, c) == colour(base.id) for c in baseline_cells)
    assert all(centre(layout, c) == (128, 128, 128) for c in layout.cells if c.kind == "source")
    # The caption is drawn: its band above the first panel holds dark text pixels.
    band = layout.image.crop((0, 0, layout.image.width, layout.cells[0].box[1] - 20)).convert("L")
    assert min(band.getdata()) < 100


def test_unpinned_axes_default_to_the_first_run_and_say_so(store, sweep):
    layout = render_grid(store, sweep, "final_step", thumb=16)
    # Columns default to the prompts; every other varied axis is pinned to the first run's value.
    assert layout.columns == "target_prompt"
    assert layout.pins == {
        "seed": "0",
        "layers": "decoder",
        "start_step": "2",
        "mask_threshold": "0.2",
    }
    assert "pinned: seed=0, layers=decoder, start_step=2, mask_threshold=0.2" in layout.caption_text
    with store.session() as s:
        for cell in layout.cells:
            if cell.kind == "target":
                run = s.get(Run, cell.run_id)
                assert (run.seed, run.layers, run.start_step, run.mask_threshold) == (
                    0,
                    "decoder",
                    2,
                    0.2,
                )
                assert centre(layout, cell) == colour(run.id)


def test_a_row_per_seed(store, sweep):
    layout = render_grid(
        store,
        sweep,
        "final_step",
        x="layers",
        seeds="each",
        thumb=16,
        pins={"start_step": 4, "mask_threshold": 0.2, "target_prompt": 0},
    )
    assert layout.row_labels[:3] == ["baseline, seed 0", "baseline, seed 1", "baseline, seed 2"]
    assert layout.row_labels[3:6] == [
        "final_step=10, seed 0",
        "final_step=10, seed 1",
        "final_step=10, seed 2",
    ]
    assert "one row per seed" in layout.caption_text and "seed" not in layout.pins
    with store.session() as s:
        for cell in layout.cells:
            if cell.kind in ("target", "baseline") and cell.run_id:
                run = s.get(Run, cell.run_id)
                assert layout.row_labels[cell.row].endswith(f"seed {run.seed}")
                assert centre(layout, cell) == colour(run.id)
    # --seeds N is a pin on the seed.
    one = render_grid(store, sweep, "final_step", seeds=2, thumb=16)
    assert one.pins["seed"] == "2"
    with store.session() as s:
        assert {s.get(Run, c.run_id).seed for c in one.cells if c.kind == "target"} == {2}


def test_missing_images_are_labelled_and_counted(store, sweep):
    run = expected_run(
        store,
        sweep,
        is_baseline=False,
        seed=0,
        prompt_index=0,
        mask_threshold=0.2,
        layers="decoder",
        start_step=2,
        final_step=15,
    )
    with store.write() as s:
        r = s.get(Run, run.id)
        r.image_path, r.status = None, "failed"
        s.add(r)
    layout = render_grid(store, sweep, "final_step", thumb=64)
    assert layout.missing == {"failed": 1} and layout.n_missing == 1
    assert "1 cells without image (failed 1)" in layout.caption_text
    (cell,) = [c for c in layout.cells if c.run_id == run.id and c.kind == "target"]
    assert not cell.has_image and centre(layout, cell) == MISSING
    x0, y0, x1, y1 = cell.box
    label = layout.image.crop((x0, y0, x1, y0 + (y1 - y0) // 3)).convert("L")
    assert min(label.getdata()) < 150  # the "no image" / "failed" label is drawn in the cell


def test_bad_axes_and_pins_are_refused(store, sweep):
    with pytest.raises(InputError, match="seed has no value '7'"):
        render_grid(store, sweep, "final_step", pins={"seed": 7})
    with pytest.raises(InputError, match="already the grid's x axis"):
        render_grid(store, sweep, "final_step", x="layers", pins={"layers": "decoder"})
    with pytest.raises(InputError, match="must differ"):
        render_grid(store, sweep, "final_step", x="final_step")
    with pytest.raises(InputError, match="not a grid axis"):
        render_grid(store, sweep, "final_step", z="nope")
    with pytest.raises(InputError, match="already a grid axis"):
        render_grid(store, sweep, "seed", seeds="each")


def test_cli_grid_with_axes_and_pins(store, home, sweep, tmp_path, monkeypatch, capsys):
    from tui.cli.main import main

    monkeypatch.chdir(tmp_path)
    h = ["--home", str(home.root)]
    assert (
        main(
            h
            + [
                "export",
                "grid",
                str(sweep),
                "--x",
                "final_step",
                "--y",
                "layers",
                "--z",
                "start_step",
                "--pin",
                "seed=1",
                "--pin",
                "mask_threshold=0.2",
                "--png",
                "g.png",
                "--thumb",
                "16",
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert (tmp_path / "g.png").is_file()
    assert "seed=1" in out.err and "mask_threshold=0.2" in out.err
    assert (
        main(
            h
            + [
                "export",
                "grid",
                str(sweep),
                "--by",
                "final_step",
                "--pin",
                "seed",
                "--png",
                "x.png",
            ]
        )
        == 2
    )
    assert (
        main(
            h
            + [
                "export",
                "grid",
                str(sweep),
                "--by",
                "final_step",
                "--pin",
                "seed=9",
                "--png",
                "x.png",
            ]
        )
        == 2
    )
    assert not (tmp_path / "x.png").exists()


def test_no_baseline_row_when_the_sweep_made_none(store):
    exp = seed_experiment(store, "nobase", seeds="0,1", final_step="10,15", baseline=False)
    layout = render_grid(store, exp.id, "final_step", thumb=16)
    assert layout.row_labels == ["final_step=10", "final_step=15"]
    # Nothing ran yet: every target cell is a counted "no image" cell, none silently dropped.
    assert (
        layout.missing == {"queued": 4}
        and "4 cells without image (queued 4)" in layout.caption_text
    )


def test_a_cancelled_baseline_in_every_panel_is_one_missing_run_and_says_cancelled(store, sweep):
    """The baseline is drawn in each Z panel: its missing image counts once. Its source pass
    exists (the targets of its prompt and seed have it), so the source is shown, not "no
    source"; where no run of the pass has a source image, the cell says "cancelled"."""
    base = expected_run(store, sweep, is_baseline=True, seed=1, prompt_index=1)
    with store.write() as s:
        r = s.get(Run, base.id)
        r.image_path, r.source_image_path, r.status = None, None, "cancelled"
        s.add(r)
    options = dict(
        x="final_step",
        z="start_step",
        thumb=64,
        pins={"seed": "1", "target_prompt": "a dog in snow", "mask_threshold": "0.4"},
    )
    layout = render_grid(store, sweep, "layers", **options)
    baseline_cells = [c for c in layout.cells if c.kind == "baseline"]
    assert len(baseline_cells) == 2 and {c.reason for c in baseline_cells} == {"cancelled"}
    assert layout.missing == {"cancelled": 1} and layout.n_missing == 1
    assert "1 cells without image (cancelled 1)" in layout.caption_text
    assert "counted once" in layout.caption_text
    # the baseline row's source: another run of the same source pass shows it
    sources = [c for c in layout.cells if c.kind == "source" and c.row == 0]
    assert sources and all(c.has_image for c in sources)
    assert all(centre(layout, c) == (128, 128, 128) for c in sources)
    # no run of that pass has its source image: the cell says why, "cancelled"
    with store.write() as s:
        for run in s.exec(select(Run).where(Run.group_key == base.group_key)):
            run.source_image_path = None
            s.add(run)
    layout = render_grid(store, sweep, "layers", **options)
    sources = [c for c in layout.cells if c.kind == "source" and c.row == 0]
    assert sources and {c.reason for c in sources} == {"cancelled"}
