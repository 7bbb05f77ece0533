"""Several hosts on one database: the data folder's identity, concurrent first starts, 64-bit
seeds, the PostgreSQL migration, and the database URL taken the same way by every command."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest
from sqlalchemy import text
from sqlmodel import select

from store import queue as q
from store.db import HOME_ID_KEY, SCHEMA_VERSION, Store, WrongHome, mask_url
from store.models import Meta, Run
from store.paths import Home
from store.queries import save_experiment
from store.sweep.spec import ExperimentSpec

DB_BACKENDS = ("sqlite", "postgresql")
BIG_SEED = 9223372036854775806


def _db_url(home: Home) -> str:
    return os.environ.get("MTP_DB_URL") or home.db_url


def test_the_folder_is_tied_to_its_database_and_reachable_by_another_path(home, tmp_path):
    url = _db_url(home)
    st = Store(home, url=url)
    db_id = st.get_meta(HOME_ID_KEY)
    st.close()
    assert db_id and home.read_id() == db_id
    # The same folder seen at another path (NFS mounted elsewhere, a symlink) is accepted.
    other_path = tmp_path / "mounted-elsewhere"
    other_path.symlink_to(home.root)
    again = Store(Home(other_path), url=url)
    assert again.get_meta(HOME_ID_KEY) == db_id
    again.close()


def test_an_empty_folder_is_refused_with_what_to_mount(home, tmp_path):
    url = _db_url(home)
    Store(home, url=url).close()
    empty = Home.resolve(tmp_path / "not-mounted")  # e.g. the mount point without the NFS share
    with pytest.raises(WrongHome) as err:
        Store(empty, url=url)
    msg = str(err.value)
    assert str(empty.root) in msg and "mount" in msg and "--home" in msg and str(home.root) in msg
    assert empty.read_id() is None  # refusing wrote nothing into the wrong folder
    assert not any(empty.artifacts.iterdir())


def test_another_databases_folder_is_refused(home, tmp_path, db_backend, request):
    Store(home, url=_db_url(home)).close()
    other = Home.resolve(tmp_path / "other")
    server = request.getfixturevalue("pg_server") if db_backend == "postgresql" else None
    other_url = server.new_database() if server else f"sqlite:///{tmp_path}/o.db"
    try:
        Store(other, url=other_url).close()
        with pytest.raises(WrongHome, match="another database"):
            Store(other, url=_db_url(home))
        with pytest.raises(WrongHome, match="another database"):
            Store(home, url=other_url)
    finally:
        if server:
            server.drop_database(other_url)


def test_the_sqlite_file_inside_its_folder_adopts_an_old_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MTP_DB_URL", raising=False)
    home = Home.resolve(tmp_path / "old")
    Store(home).close()
    home.id_path.unlink()  # a folder made before folders had ids
    st = Store(home)
    assert home.read_id() == st.get_meta(HOME_ID_KEY)
    st.close()


def _first_start(home_root, url, barrier, out):
    barrier.wait()
    try:
        st = Store(Home.resolve(home_root), url=url)
        out.put(("ok", st.schema_version(), st.get_meta(HOME_ID_KEY)))
        st.close()
    except Exception as exc:  # reported to the assertion below
        out.put(("error", repr(exc), None))


def test_four_processes_starting_at_once_on_an_empty_database(home):
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [
        ctx.Process(target=_first_start, args=(str(home.root), _db_url(home), barrier, out))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert [r[0] for r in results] == ["ok"] * 4, results
    assert {r[1] for r in results} == {SCHEMA_VERSION}
    assert len({r[2] for r in results}) == 1 and results[0][2] == home.read_id()


def test_64_bit_seeds_are_stored_claimed_and_read_back_exactly(store):
    spec = ExperimentSpec(
        model="m",
        source_prompt="a dog",
        target_prompts=["a dog"],
        num_steps=4,
        width=64,
        height=64,
        seeds=f"{BIG_SEED - 1}-{BIG_SEED}",
        start_step="1",
        baseline=False,
    )
    save_experiment(store, "big", spec, queue=True)
    claimed = q.claim_group(store, "w", max_batch=8) + q.claim_group(store, "w", max_batch=8)
    assert sorted(r.seed for r in claimed) == [BIG_SEED - 1, BIG_SEED]
    with store.session() as s:
        assert s.exec(select(Run.id).where(Run.seed == BIG_SEED)).one()


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
def test_a_version_1_postgresql_database_gets_64_bit_seeds(home):
    url = _db_url(home)
    Store(home, url=url).close()
    st = Store(home, url=url)
    with st.write() as s:  # what mtp 1 created: int4 seeds
        s.exec(text("ALTER TABLE run ALTER COLUMN seed TYPE INTEGER"))
        s.merge(Meta(key="schema_version", value="1"))
    st.close()
    st = Store(home, url=url)
    with st.session() as s:
        kind = s.exec(
            text(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = 'run' AND column_name = 'seed'"
            )
        ).one()[0]
    st.close()
    assert kind == "bigint"


def test_every_command_takes_the_database_the_same_way(home, tmp_path, monkeypatch, capsys):
    from engine.cli import build_parser as engine_parser
    from tui.app import build_parser as tui_parser
    from tui.cli.main import main as mtp_main

    url = _db_url(home)
    Store(home, url=url).close()
    for parser in (engine_parser(), tui_parser()):
        assert parser.parse_args(["--db", url]).db == url
    # --db wins over $MTP_DB_URL; a wrong URL in the environment is not used.
    monkeypatch.setenv("MTP_DB_URL", "sqlite:///" + str(tmp_path / "elsewhere.db"))
    assert mtp_main(["--home", str(home.root), "--db", url, "init"]) == 0
    out = capsys.readouterr().out
    assert mask_url(url) in out and str(home.root) in out


def test_passwords_are_masked():
    masked = mask_url("postgresql+psycopg://lab:s3cret@db.example:5432/mtp")
    assert "s3cret" not in masked and "lab" in masked and "db.example" in masked


def test_workers_are_listed_grouped_by_host(store):
    for host, dev in (
        ("gpu-b", "cuda:0"),
        ("gpu-a", "cuda:1"),
        ("gpu-b", "cuda:1"),
        ("gpu-a", "cuda:0"),
    ):
        q.register_worker(store, dev, host=host, pid=100)
    listed = [(w.host, w.device) for w in q.list_workers(store)]
    assert listed == [
        ("gpu-a", "cuda:0"),
        ("gpu-a", "cuda:1"),
        ("gpu-b", "cuda:0"),
        ("gpu-b", "cuda:1"),
    ]
    assert all(w.id.startswith(f"{w.host}:100:") for w in q.list_workers(store))


def test_grid_export_warns_when_done_runs_have_no_image_here(store, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from tui.cli.main import main as mtp_main

    spec = ExperimentSpec(
        model="m",
        source_prompt="a dog",
        target_prompts=["a dog"],
        num_steps=4,
        width=64,
        height=64,
        seeds="0",
        start_step="1",
        final_step="2,3",
        baseline=False,
    )
    exp = save_experiment(store, "g", spec, queue=True)
    runs = q.claim_group(store, "w", max_batch=8)
    here = store.home.run_dir(runs[0].id)
    here.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(here / "target.png")
    q.complete_runs(
        store,
        "w",
        [
            {"run_id": runs[0].id, "image_path": f"artifacts/run-{runs[0].id}/target.png"},
            {
                "run_id": runs[1].id,
                "image_path": f"artifacts/run-{runs[1].id}/target.png",
            },  # written elsewhere
        ],
    )
    monkeypatch.chdir(tmp_path)
    assert (
        mtp_main(
            [
                "--home",
                str(store.home.root),
                "export",
                "grid",
                str(exp.id),
                "--by",
                "final_step",
                "--png",
                "g.png",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert (
        f"1 done run(s) have no image file under {store.home.root}" in err
        and f"run {runs[1].id}" in err
    )


def test_a_source_image_inside_the_data_folder_is_recorded_relative_to_it(store):
    from PIL import Image

    img = store.home.root / "inputs" / "cat.png"
    img.parent.mkdir()
    Image.new("RGB", (16, 16)).save(img)
    spec = ExperimentSpec(
        model="m",
        source_image=str(img),
        target_prompts=["a cat"],
        num_steps=4,
        width=64,
        height=64,
        seeds="0",
        start_step="1",
        baseline=False,
    )
    save_experiment(store, "real", spec, queue=True)
    (run,) = q.claim_group(store, "w")
    assert run.source_image == "inputs/cat.png"


def test_seed_text_is_read_as_whole_numbers_never_through_float():
    from store.sweep.grammar import SweepError, parse_values
    from store.sweep.spec import AXES

    seeds = AXES["seeds"]
    assert parse_values(seeds, str(BIG_SEED)) == [BIG_SEED]
    assert parse_values(seeds, f"{BIG_SEED - 2}-{BIG_SEED}") == [
        BIG_SEED - 2,
        BIG_SEED - 1,
        BIG_SEED,
    ]
    assert parse_values(seeds, f"{BIG_SEED - 6}-{BIG_SEED} [3]") == [
        BIG_SEED - 6,
        BIG_SEED - 3,
        BIG_SEED,
    ]
    with pytest.raises(SweepError, match="above the maximum 9223372036854775807"):
        parse_values(seeds, str(2**63))


# The runs-CSV round trip of tests/store/test_export.py, collected here so it also runs on
# PostgreSQL: booleans as 0/1 and timestamps as ISO 8601 UTC with "Z" on both backends.
