"""Schema version 2 (issue 10): a version-1 database gains Run.score_error, Run.session_id and
the enginesession / scorerequest tables, keeping its rows; version 3 adds the score sort index."""

from __future__ import annotations

import sqlite3

from sqlmodel import select

from store.db import SCHEMA_VERSION, Store
from store.models import Run, ScoreRequest
from store.scoring import record_engine_session, request_scoring


def test_version_1_database_is_upgraded_in_place(home):
    from tests.tui import seed_experiment

    store = Store(home)
    exp = seed_experiment(store)
    store.close()
    con = sqlite3.connect(home.root / "mtp.db")
    # Back to what version 1 had: no new columns, no new tables.
    con.execute("DROP TABLE scorerequest")
    con.execute("DROP TABLE enginesession")
    con.execute("DROP INDEX ix_score_sort")  # version 3's score indexes, back to version 2's
    con.execute("DROP INDEX ix_score_run")
    con.execute("CREATE INDEX ix_score_run_id ON score (run_id)")
    # (SQLite cannot drop a column named in a foreign key: copy the table without them.)
    cols = [
        r[1]
        for r in con.execute("PRAGMA table_info(run)")
        if r[1] not in ("score_error", "session_id")
    ]
    con.execute(f"CREATE TABLE run_v1 AS SELECT {', '.join(cols)} FROM run")
    con.execute("DROP TABLE run")
    con.execute("ALTER TABLE run_v1 RENAME TO run")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    n_runs = con.execute("select count(*) from run").fetchone()[0]
    con.close()

    store = Store(home)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        with sqlite3.connect(home.root / "mtp.db") as check:
            names = {
                n
                for (n,) in check.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'score'")
            }
            assert {"ix_score_sort", "ix_score_run"} <= names and "ix_score_run_id" not in names
        with store.session() as s:
            runs = list(s.exec(select(Run)))
        assert len(runs) == n_runs and all(
            r.score_error is None and r.session_id is None for r in runs
        )
        sid = record_engine_session(store, model="m", versions={"torch": "9"})
        req, created = request_scoring(store, exp.id)
        assert created and isinstance(req, ScoreRequest) and sid >= 1
    finally:
        store.close()
