"""Schema version 2: a version-1 database gains Run.score_error, Run.session_id and the
enginesession / scorerequest tables, keeping its rows; version 3 adds the score sort index."""

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


def test_version_3_database_gains_the_score_session_link(home):
    """Version 5: Score.session_id and the scoring session's fields, added in place; older
    scores keep NULL (who computed them was not recorded)."""
    from store.models import EngineSession, Score
    from tests.tui import add_scores, seed_experiment

    store = Store(home)
    exp = seed_experiment(store)
    add_scores(store, exp.id)
    store.close()
    con = sqlite3.connect(home.root / "mtp.db")
    # (a column in a foreign key cannot be dropped: score is copied without it)
    cols = [r[1] for r in con.execute("PRAGMA table_info(score)") if r[1] != "session_id"]
    con.execute(f"CREATE TABLE score_v3 AS SELECT {', '.join(cols)} FROM score")
    con.execute("DROP TABLE score")
    con.execute("ALTER TABLE score_v3 RENAME TO score")
    for column in ("role", "scorer_device", "scorer_dtype", "preprocess_json"):
        con.execute(f"ALTER TABLE enginesession DROP COLUMN {column}")
    con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    con.commit()
    n_scores = con.execute("select count(*) from score").fetchone()[0]
    con.close()

    store = Store(home)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        with store.session() as s:
            scores = list(s.exec(select(Score)))
        assert len(scores) == n_scores > 0 and all(sc.session_id is None for sc in scores)
        sid = record_engine_session(
            store, role="score", scorer_dtype="torch.float16", preprocess={"clip": "resize"}
        )
        with store.session() as s:
            sess = s.get(EngineSession, sid)
        assert sess.role == "score" and sess.preprocess == {"clip": "resize"}
    finally:
        store.close()
