import multiprocessing as mp
import sqlite3
import time

import pytest
from sqlmodel import select

from store.db import SCHEMA_VERSION, SchemaTooNew, Store
from store.models import Experiment, Run
from store.paths import Home
from store.queries import list_runs, save_experiment
from store.sweep.spec import ExperimentSpec


def test_pragmas_and_schema_version(store):
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    assert store.schema_version() == SCHEMA_VERSION


def test_home_folders_and_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("MTP_HOME", str(tmp_path / "elsewhere"))
    h = Home.resolve()
    assert h.root == (tmp_path / "elsewhere").resolve()
    assert h.db_path.parent == h.root and h.artifacts.is_dir() and h.logs.is_dir()
    assert Home.resolve(tmp_path / "explicit").root == (tmp_path / "explicit").resolve()


def test_reopening_keeps_data_and_refuses_a_newer_schema(home):
    s = Store(home)
    save_experiment(s, "keep me", ExperimentSpec(), queue=True)
    s.close()
    s = Store(home)
    assert list_runs(s)[1] == 2  # one baseline + one controlled run survive a reopen
    s.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    s.close()
    with pytest.raises(SchemaTooNew, match="newer than this mtp"):
        Store(home)


def test_foreign_keys_are_enforced(store):
    with pytest.raises(Exception, match="FOREIGN KEY"):
        with store.write() as s:
            s.add(Run(experiment_id=999))


def _app_like(home_root, n):
    # The app: creates experiments (reads then writes) while the engine hammers runs.
    s = Store(Home.resolve(home_root))
    for i in range(n):
        save_experiment(s, f"app-{i}", ExperimentSpec(seeds="0,1"), queue=True)
        list_runs(s, limit=20)
    s.close()


def _engine_like(home_root, n):
    s = Store(Home.resolve(home_root))
    done = 0
    deadline = time.monotonic() + 90  # fail the assertion below rather than hang
    while done < n and time.monotonic() < deadline:
        with s.write() as sess:
            run = sess.exec(select(Run).where(Run.status == "queued").limit(1)).first()
            if run is not None:
                run.status = "done"
                sess.add(run)
                done += 1
    s.close()


@pytest.mark.subprocess
def test_app_and_engine_share_one_database_without_lock_errors(home):
    Store(home).close()
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_app_like, args=(str(home.root), 25)),
        ctx.Process(target=_engine_like, args=(str(home.root), 50)),
        ctx.Process(target=_engine_like, args=(str(home.root), 50)),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    s = Store(home)
    with s.session() as sess:
        assert len(sess.exec(select(Experiment)).all()) == 25
        assert len(sess.exec(select(Run).where(Run.status == "done")).all()) == 100
    s.close()


def test_database_file_is_plain_sqlite(store):
    # Anyone can open the record with the sqlite3 shell or pandas.
    con = sqlite3.connect(store.home.db_path)
    assert ("schema_version", str(SCHEMA_VERSION)) in con.execute(
        "select key, value from meta"
    ).fetchall()
    con.close()


def test_change_token_moves_on_run_writes_from_any_connection_only(home):
    """Screens poll this instead of reloading: it must move on every run/score/experiment
    commit (other processes included) and stay put for heartbeats and flags."""
    from store import queue
    from store.db import Store
    from store.queries import update_runs
    from tests.tui import seed_experiment

    app, engine = Store(home), Store(home)
    try:
        before = app.change_token()
        exp = seed_experiment(engine)
        after_queue = app.change_token()
        assert after_queue != before
        wid = queue.register_worker(engine, "cpu")
        queue.heartbeat(engine, wid, status="idle")
        queue.set_paused(engine, True)
        queue.set_paused(engine, False)
        assert app.change_token() == after_queue
        (run,) = queue.claim_group(engine, wid, max_batch=1)
        claimed = app.change_token()
        assert claimed != after_queue
        queue.complete_runs(engine, wid, [{"run_id": run.id, "scores": []}])
        assert app.change_token() != claimed
        done = app.change_token()
        update_runs(app, [run.id], marked=True)
        assert engine.change_token() != done
        assert exp.id
    finally:
        app.close()
        engine.close()
