"""Runs sorted by a score: the index walk (big result sets) and the per-run subquery (small ones,
several backbones) must give the same pages, on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from store import queries
from store.models import Run, Score
from store.queries import RunFilter, list_runs, save_experiment
from store.sweep.spec import ExperimentSpec

DB_BACKENDS = ("sqlite", "postgresql")


def _seed(store) -> int:
    spec = ExperimentSpec(
        seeds="0-9",
        final_step="10,20,30",
        layers="decoder,encoder",
        target_prompts=["a dog on the beach", "a dog in the snow"],
    )
    exp = save_experiment(store, "paging", spec, queue=True)
    with store.write() as s:
        ids = [
            r
            for (r,) in s.execute(
                select(Run.id).where(Run.experiment_id == exp.id).order_by(Run.id)
            )
        ]
        rows = []
        for i, rid in enumerate(ids):
            if i % 5 == 4:
                continue  # unscored
            # few distinct values, so ties must be broken by run id
            rows.append(
                {"run_id": rid, "metric": "clip_t", "backbone": "b1", "value": (i * 7 % 6) / 10}
            )
            if i % 3 == 0:  # another metric only: still unscored for clip_t
                rows.append({"run_id": rid, "metric": "dino_ref", "backbone": "b1", "value": 0.5})
        s.execute(Score.__table__.insert(), rows)
        s.execute(Run.__table__.update().where(Run.id.in_(ids[::4])).values(status="done"))
    return exp.id


FILTERS = [
    RunFilter(),
    RunFilter(statuses=["done"]),
    RunFilter(text="snow"),
    RunFilter(equals={"seed": 3}),
    RunFilter(equals={"final_step": 20}, text="beach"),
]


def _order(store, filt, descending):
    """Every matching run id in sort order, read in pages of 7 (pages cross the point where
    scored runs end)."""
    out = []
    offset = 0
    while True:
        page, total = list_runs(
            store, filt, sort="score:clip_t", descending=descending, offset=offset, limit=7
        )
        out += [r.id for r in page]
        offset += 7
        if offset >= total:
            return out, total


def test_index_walk_equals_subquery(store, monkeypatch):
    exp_id = _seed(store)
    with store.session() as s:
        value = {
            r: v
            for r, v in s.execute(select(Score.run_id, Score.value).where(Score.metric == "clip_t"))
        }
    walked = []
    real = queries._score_page_by_index
    monkeypatch.setattr(queries, "_score_page_by_index", lambda *a: walked.append(1) or real(*a))
    for filt in FILTERS + [RunFilter(experiment_id=exp_id)]:
        for descending in (True, False):
            monkeypatch.setattr(queries, "SCORE_INDEX_MIN_RUNS", 10**9)
            walked.clear()
            by_subquery, total = _order(store, filt, descending)
            assert not walked
            monkeypatch.setattr(queries, "SCORE_INDEX_MIN_RUNS", 0)
            by_index, total2 = _order(store, filt, descending)
            assert walked  # the index path really ran
            assert by_index == by_subquery and total == total2 == len(by_index) == len(
                set(by_index)
            )
            # and the order is the documented one: by score, ties by id, unscored last by id
            scored = [r for r in by_index if r in value]
            key = (lambda r: (-value[r], r)) if descending else (lambda r: (value[r], r))
            assert scored == sorted(scored, key=key)
            assert by_index == scored + sorted(r for r in by_index if r not in value)


def test_several_backbones_average_and_unscored_last(store, monkeypatch):
    monkeypatch.setattr(queries, "SCORE_INDEX_MIN_RUNS", 0)  # big enough: only the backbones decide
    exp_id = _seed(store)
    with store.session() as s:
        ids = [
            r
            for (r,) in s.execute(
                select(Run.id).where(Run.experiment_id == exp_id).order_by(Run.id)
            )
        ]
    a, b = ids[0], ids[1]
    with store.write() as s:
        s.execute(
            Score.__table__.update()
            .where(Score.run_id == a, Score.metric == "clip_t")
            .values(value=0.9)
        )
        s.execute(
            Score.__table__.insert(),
            [{"run_id": a, "metric": "clip_t", "backbone": "b2", "value": 0.1}],
        )
        s.execute(
            Score.__table__.update()
            .where(Score.run_id == b, Score.metric == "clip_t")
            .values(value=0.6)
        )
    page, _ = list_runs(
        store, RunFilter(experiment_id=exp_id), sort="score:clip_t", descending=True, limit=1000
    )
    order = [r.id for r in page]
    assert order.index(b) < order.index(a)  # a averages 0.5 over its two backbones, below b's 0.6
    unscored = ids[4::5]
    for descending in (True, False):
        page, _ = list_runs(
            store,
            RunFilter(experiment_id=exp_id),
            sort="score:clip_t",
            descending=descending,
            limit=1000,
        )
        assert [r.id for r in page][-len(unscored) :] == unscored


def test_tail_of_unscored_runs_pages_exactly(store, monkeypatch):
    """Pages that start inside the unscored runs: nothing skipped, nothing twice."""
    monkeypatch.setattr(queries, "SCORE_INDEX_MIN_RUNS", 0)
    exp_id = _seed(store)
    full, total = list_runs(
        store, RunFilter(experiment_id=exp_id), sort="score:clip_t", descending=True, limit=10_000
    )
    for offset in (total - 30, total - 24, total - 1, total):
        page, _ = list_runs(
            store,
            RunFilter(experiment_id=exp_id),
            sort="score:clip_t",
            descending=True,
            offset=offset,
            limit=5,
        )
        assert [r.id for r in page] == [r.id for r in full[offset : offset + 5]]


@pytest.mark.parametrize("descending", [True, False])
def test_no_scores_at_all_sorts_by_id(store, descending):
    _seed(store)
    page, total = list_runs(
        store, RunFilter(), sort="score:dreamsim_ref", descending=descending, limit=1000
    )
    assert [r.id for r in page] == sorted(r.id for r in page) and len(page) == total


def test_sqlite_reads_each_runs_score_by_run(store, monkeypatch, db_backend):
    """The per-run score subquery (small result sets, several backbones) must look a run's score
    up by (run_id, metric); reading every score of the metric once per run made a 100k-run sort
    take minutes. Checked on the statement list_runs really executes."""
    if db_backend != "sqlite":
        pytest.skip("SQLite's query planner")
    from sqlalchemy import event

    _seed(store)
    monkeypatch.setattr(queries, "SCORE_INDEX_MIN_RUNS", 10**9)
    seen = []

    def grab(conn, cursor, statement, params, context, executemany):
        if "avg(score.value)" in statement:
            seen.append((statement, params))

    event.listen(store.engine, "before_cursor_execute", grab)
    try:
        list_runs(store, RunFilter(), sort="score:clip_t", descending=True, limit=5)
    finally:
        event.remove(store.engine, "before_cursor_execute", grab)
    assert seen
    with store.engine.connect() as conn:
        plan = [
            row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + seen[0][0], seen[0][1])
        ]
    lookups = [p for p in plan if p.startswith("SEARCH score")]
    assert lookups and all("run_id=?" in p for p in lookups), plan
