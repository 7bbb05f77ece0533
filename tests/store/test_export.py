"""CSV exports round-trip every field; exports never land outside the chosen folder."""

from __future__ import annotations

import csv
from datetime import UTC, datetime

import pytest
from sqlmodel import select

from store.models import Run, Score
from store.queries import InputError
from store.report.aggregate import aggregate
from store.report.export import (
    export_grid_png,
    export_plot_png,
    export_runs_csv,
    export_summary_csv,
    resolve_output,
    safe_filename,
)
from tests.store.test_aggregate import B32, add_runs, make_experiment, seed_sweep

NASTY = 'comma, "quote", new\nline, ünïcode'


def _odd_experiment(store):
    exp_id, (concept,) = make_experiment(store, "odd")
    ids = add_runs(
        store,
        exp_id,
        [
            dict(
                final_step=10,
                notes=NASTY,
                tags="a,b",
                target_prompt="a <new1> dog",
                seed=2**40,
                guidance=7.25,
                mask_threshold=None,
                duration_s=1.0 / 3,
                concept_id=concept,
                layers="{0,2,4}",
                started_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
            ),
            dict(
                final_step=20,
                is_baseline=True,
                mask_threshold=0.125,
                error="Traceback\n  boom",
                marked=True,
            ),
        ],
        [{"clip_t": 0.123456789012345678, "clip_i_ref": -0.5, "dino_ref": 0.25}, {"clip_t": 0.2}],
    )
    with store.write() as s:
        s.add(
            Score(
                run_id=ids[0],
                metric="clip_t",
                backbone="ViT-L-14/openai",
                value=0.31,
                scored_text="a dog",
            )
        )
    return exp_id, ids


def _expected(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"
    return str(value)


def test_runs_csv_round_trip_preserves_every_field(store, tmp_path):
    exp_id, ids = _odd_experiment(store)
    out = export_runs_csv(store, exp_id, "runs.csv", folder=tmp_path)
    assert out == tmp_path / "runs.csv"
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["id"]) for r in rows] == ids
    with store.session() as s:
        runs = {r.id: r for r in s.exec(select(Run).where(Run.experiment_id == exp_id))}
    columns = list(Run.__table__.columns.keys())
    assert list(rows[0])[: len(columns)] == columns  # every run column, no index column
    for row in rows:
        run = runs[int(row["id"])]
        for name in columns:
            assert row[name] == _expected(getattr(run, name)), name
    first, second = rows
    assert first["notes"] == NASTY
    assert float(first[f"clip_t@{B32}"]) == 0.123456789012345678  # bit-exact float
    assert float(first["clip_t@ViT-L-14/openai"]) == 0.31
    assert float(first[f"clip_i_ref@{B32}"]) == -0.5
    assert first["scored_text"] in ("a photo of a dog", "a dog")
    assert second[f"clip_i_ref@{B32}"] == "" and second["marked"] == "1"
    started = datetime.fromisoformat(first["started_at"].replace("Z", "+00:00"))
    assert started == datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert datetime.fromisoformat(first["created_at"].replace("Z", "+00:00")).tzinfo is not None


def test_runs_csv_in_pandas(store, tmp_path):
    pd = pytest.importorskip("pandas")
    exp_id, ids = _odd_experiment(store)
    df = pd.read_csv(export_runs_csv(store, exp_id, "runs.csv", folder=tmp_path))
    assert list(df["id"]) == ids
    assert df.loc[0, "notes"] == NASTY
    assert df.loc[0, f"clip_t@{B32}"] == 0.123456789012345678


def test_runs_csv_scales(store, tmp_path):
    exp_id, _ = _odd_experiment(store)
    with open(
        export_runs_csv(store, exp_id, "s.csv", scale="clipscore", folder=tmp_path), newline=""
    ) as fh:
        first = next(csv.DictReader(fh))
    # Custom Diffusion's clipscore scales text alignment only; image metrics stay raw.
    assert float(first[f"clip_t@{B32}"]) == pytest.approx(2.5 * 0.123456789012345678)
    assert float(first[f"clip_i_ref@{B32}"]) == pytest.approx(-0.5)
    assert float(first[f"dino_ref@{B32}"]) == pytest.approx(0.25)
    with open(
        export_runs_csv(store, exp_id, "h.csv", scale="100", folder=tmp_path), newline=""
    ) as fh:
        first = next(csv.DictReader(fh))
    assert float(first[f"clip_i_ref@{B32}"]) == pytest.approx(-50.0)
    with pytest.raises(InputError):
        export_runs_csv(store, exp_id, "x.csv", scale="percent", folder=tmp_path)


def test_summary_csv_matches_aggregate(store, tmp_path):
    exp_id = seed_sweep(store)
    out = export_summary_csv(store, exp_id, "final_step", "summary", folder=tmp_path)
    assert out.name == "summary.csv"
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    agg = aggregate(store, exp_id, "final_step")
    assert [r["value"] for r in rows] == ["", "25", "10", "40"]
    assert [r["is_baseline"] for r in rows] == ["True", "False", "False", "False"]
    assert [r["pareto"] for r in rows] == ["False", "True", "True", "False"]
    for line, row in zip(rows, agg):
        for metric, st in row.metrics.items():
            assert float(line[f"{metric}_mean"]) == st.mean
            assert float(line[f"{metric}_sem"]) == st.sem
            assert int(line[f"{metric}_n"]) == st.n
            assert line[f"{metric}_backbone"] == B32


@pytest.mark.parametrize("bad", ["../out.csv", "sub/../../out.csv", "..", "/", "  ", "..."])
def test_paths_cannot_escape_the_folder(tmp_path, bad):
    (tmp_path / "sub" / "link").parent.mkdir()
    (tmp_path / "sub" / "link").symlink_to(tmp_path)
    with pytest.raises(InputError):
        resolve_output("link/out.csv", ".csv", tmp_path / "sub")
    with pytest.raises(InputError):
        resolve_output(bad, ".csv", tmp_path / "sub")


def test_paths_are_sanitised(tmp_path):
    assert safe_filename("my run: final/step?", ".csv") == "my run_ final_step_.csv"
    assert safe_filename(".hidden", ".csv") == "hidden.csv"
    assert resolve_output("a b.csv", ".csv", tmp_path) == tmp_path.resolve() / "a b.csv"
    assert resolve_output("plot", ".png", tmp_path) == tmp_path.resolve() / "plot.png"
    (tmp_path / "d").mkdir()
    assert resolve_output("d/x.csv", ".csv", tmp_path) == tmp_path.resolve() / "d" / "x.csv"
    assert (
        resolve_output(tmp_path / "d" / "in.csv", ".csv", tmp_path)
        == tmp_path.resolve() / "d" / "in.csv"
    )
    with pytest.raises(InputError):  # absolute, but outside the chosen folder
        resolve_output(tmp_path / "abs.csv", ".csv", tmp_path / "d")
    # Without a folder an absolute path is the user's own explicit choice; only its name is cleaned.
    assert resolve_output(tmp_path / "abs?.csv", ".csv") == tmp_path.resolve() / "abs_.csv"
    with pytest.raises(InputError):
        resolve_output("rel.csv", ".csv")
    with pytest.raises(InputError):
        resolve_output("missing/x.csv", ".csv", tmp_path)


def test_export_refuses_escape_and_writes_nothing(store, tmp_path):
    exp_id = seed_sweep(store)
    with pytest.raises(InputError):
        export_runs_csv(store, exp_id, tmp_path / "abs.csv")  # absolute, outside home/exports
    inner = tmp_path / "inner"
    inner.mkdir()
    for fn, args in (
        (export_runs_csv, ()),
        (export_summary_csv, ("final_step",)),
        (export_plot_png, ("final_step",)),
        (export_grid_png, ("final_step",)),
    ):
        with pytest.raises(InputError):
            fn(store, exp_id, *args, "../evil", folder=inner)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "inner"]
    assert list(inner.iterdir()) == []


def test_default_folder_is_home_exports(store):
    exp_id = seed_sweep(store)
    out = export_runs_csv(store, exp_id, "r.csv")
    assert out.parent == store.home.exports and out.is_file()
    assert [p.name for p in store.home.exports.iterdir()] == ["r.csv"]  # no temp file left behind


def test_cli_exports(store, home, tmp_path, monkeypatch, capsys):
    from tui.cli.main import main

    seed_sweep(store, name="corgi final step")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    h = ["--home", str(home.root)]
    assert (
        main(h + ["export", "runs", "corgi final step", "--csv", "runs.csv", "--scale", "100"]) == 0
    )
    assert main(h + ["export", "summary", "1", "--by", "final_step", "--csv", "sum.csv"]) == 0
    assert (
        main(h + ["export", "plot", "1", "--by", "final_step", "--png", "plot.png", "--text"]) == 0
    )
    assert main(h + ["export", "grid", "1", "--by", "final_step", "--png", "grid.png"]) == 0
    assert sorted(p.name for p in work.iterdir()) == ["grid.png", "plot.png", "runs.csv", "sum.csv"]
    assert "baseline" in capsys.readouterr().out
    assert main(h + ["export", "runs", "1"]) == 0
    assert (home.exports / "corgi_final_step-runs.csv").is_file()  # default names: no spaces
    assert main(h + ["export", "runs", "1", "--csv", "../out.csv"]) == 2
    assert main(h + ["export", "runs", "1", "--csv", str(tmp_path / "chosen.csv")]) == 0
    assert (tmp_path / "chosen.csv").is_file()
    assert main(h + ["export", "summary", "1", "--by", "nope", "--csv", "s.csv"]) == 2
    assert main(h + ["export", "runs", "no such experiment"]) == 2
    assert not (tmp_path / "out.csv").exists()


def test_prefetch_hands_on_errors():
    from store.report.export import _prefetch

    def chunks():
        yield [1]
        raise RuntimeError("disk gone")

    got = []
    with pytest.raises(RuntimeError, match="disk gone"):
        for c in _prefetch(chunks()):
            got.append(c)
    assert got == [[1]]
    assert list(_prefetch(iter([[1], [2], [3]] * 5), depth=2)) == [[1], [2], [3]] * 5


def test_summary_csv_states_unit_scale_references_and_gaps(store, tmp_path):
    from tests.store.test_aggregate import unbalanced

    exp_id = unbalanced(store)
    out = export_summary_csv(
        store, exp_id, "final_step", "u.csv", scale="clipscore", folder=tmp_path, cells="all"
    )
    with open(out, newline="") as fh:
        base, r10, r20 = list(csv.DictReader(fh))
    for line in (base, r10, r20):
        assert line["unit"] == "concepts" and "SEM over concepts" in line["unit_definition"]
        assert line["scale"] == "clipscore"
        assert line["clip_t_scale"].startswith("clipscore") and line["clip_i_ref_scale"].startswith(
            "raw"
        )
        assert line["dino_ref_scale"].startswith("raw")
        assert (
            line["image_alignment"].startswith("clip_i_ref")
            and "reference images" in line["image_alignment"]
        )
    assert [line["n_unit"] for line in (base, r10, r20)] == ["2", "2", "1"]  # concepts in each row
    assert float(r10["clip_t_mean"]) == pytest.approx(0.70)  # 2.5 x (0.32 + 0.24) / 2
    assert float(r10["clip_i_ref_mean"]) == pytest.approx(0.82)  # unscaled
    # One concept: n = 1, std and SEM empty (undefined), the missing concept named.
    assert r10["clip_i_ref_n"] == "1" and r10["clip_i_ref_sem"] == r10["clip_i_ref_std"] == ""
    assert (
        r10["clip_i_ref_missing"] == "unbalanced-concept1; 2 of 4 planned runs"
        and "unbalanced-concept1" in r10["incomplete"]
    )
    assert r20["clip_t_sem"] == "" and "unbalanced-concept1" in r20["incomplete"]
    # The baseline has no DINO at all and no CLIP-I for B.
    assert base["incomplete"] == (
        "clip_i_ref: unbalanced-concept1, 2 of 4 planned runs | "
        "dino_ref: unbalanced-concept0, unbalanced-concept1, 0 of 4 planned runs"
    )
    assert r10["clip_t_missing"] == "" and r10["clip_t_sem"] != ""
    # paired with the baseline over the same concepts: A -0.06, B -0.05, times 2.5 (clipscore)
    assert r10["paired_against"] == "baseline" and r10["clip_t_diff_n"] == "2"
    assert float(r10["clip_t_diff_mean"]) == pytest.approx(2.5 * -0.055)
    assert float(r10["clip_t_diff_sem"]) == pytest.approx(2.5 * 0.005)
    assert r10["n_text"].startswith("n = 2 concepts")
    assert r10["cells"] == "all" and "Student's t" in r10["paired_definition"]


def test_cli_summary_states_unit_and_warns_of_gaps(store, home, tmp_path, monkeypatch, capsys):
    from tests.store.test_aggregate import unbalanced
    from tui.cli.main import main

    exp_id = unbalanced(store)
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "--home",
                str(home.root),
                "export",
                "summary",
                str(exp_id),
                "--by",
                "final_step",
                "--scale",
                "clipscore",
                "--cells",
                "all",
                "--csv",
                "s.csv",
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert out.out.strip().endswith("s.csv")  # stdout stays the path
    assert "SEM over concepts" in out.err and "clipscore (2.5*max(cos,0)) on clip_t" in out.err
    assert "warning: 20: missing" in out.err and "unbalanced-concept1" in out.err
    # by default the rows are compared over common cells, and the drop is said
    h = ["--home", str(home.root), "export", "summary", str(exp_id), "--by", "final_step"]
    assert main(h + ["--csv", "d.csv"]) == 0
    err = capsys.readouterr().err
    assert "clip_t: 2 of 4 cells dropped, incomplete in final_step=20 (2)" in err
    assert main(h + ["--csv", "v.csv", "--versus", "20"]) == 0
    assert "paired: difference to 20" in capsys.readouterr().err
    assert main(h + ["--csv", "x.csv", "--versus", "99"]) == 2
    assert "no value '99'" in capsys.readouterr().err


def test_default_export_names_have_no_spaces_and_never_overwrite(store, tmp_path):
    from store.queries import save_experiment
    from store.report.export import default_name, export_runs_csv
    from store.sweep.spec import ExperimentSpec

    exp = save_experiment(store, "corgi final step", ExperimentSpec(model="org/m"))
    first = default_name(store, exp.id, "runs", ".csv", folder=tmp_path)
    assert first == "corgi_final_step-runs.csv"
    export_runs_csv(store, exp.id, first, folder=tmp_path)
    second = default_name(store, exp.id, "runs", ".csv", folder=tmp_path)
    assert second == "corgi_final_step-runs-2.csv"
    export_runs_csv(store, exp.id, second, folder=tmp_path)
    assert default_name(store, exp.id, "runs", ".csv", folder=tmp_path).endswith("-3.csv")
