"""Engines that are wrong rather than runs: skewed host clocks, a database that goes away and
comes back, and an engine on which every run fails alike (its brake)."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from engine import artifacts
from engine.backends.fake import FakeBackend, fake_score
from engine.faults import EngineFault, error_signature, probe, shown_error, systemic_reason
from engine.worker import Worker, WorkerConfig
from store import queue as q
from store.db import Store, describe_db_error
from store.models import RunStatus
from store.models import Worker as WorkerRow
from tests.engine.test_recovery import ROOT, engine, fake_env, finish, make_exp, runs_of, wait_for

DB_BACKENDS = ("sqlite", "postgresql")

# Raw database text that must never reach a person (a pause reason, a run's error).
RAW = re.compile(
    r"IntegrityError|OperationalError|duplicate key|meta_pkey|psycopg|INSERT|UPDATE|SELECT|\[SQL|"
    r"sqlalche\.me|Is the server running",
    re.I,
)


def mtp(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli.main", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ------------------------------------------------------------------ 4. skewed clocks
def test_engines_with_skewed_clocks_requeue_nothing_and_show_no_negative_age(store, tmp_path):
    """One host 5 minutes behind, one 5 minutes ahead (default stale settings): the ahead one,
    and `mtp workers --recover` under either clock, never take the behind one for dead."""
    base = fake_env(tmp_path, step_s=0.1)
    skewed_engines(
        store, dict(base, MTP_CLOCK_OFFSET_S="-300"), dict(base, MTP_CLOCK_OFFSET_S="300")
    )


def _libfaketime() -> str | None:
    import glob

    found = glob.glob("/usr/lib/*/faketime/libfaketime.so.1") + glob.glob(
        "/usr/lib/faketime/libfaketime.so.1"
    )
    return found[0] if found else None


@pytest.mark.skipif(_libfaketime() is None, reason="libfaketime is not installed (apt faketime)")
def test_engines_under_libfaketime_requeue_nothing(store, tmp_path):
    """The same with the whole process's clock shifted (SQLite's included), as by a wrong host."""
    base = dict(fake_env(tmp_path, step_s=0.1), LD_PRELOAD=_libfaketime())
    skewed_engines(store, dict(base, FAKETIME="-5m"), dict(base, FAKETIME="+5m"))


def skewed_engines(store, behind_env, ahead_env) -> None:
    for seed in range(8):
        make_exp(store, f"e{seed}", seeds=str(seed))  # 64 runs in 8 groups
    home = str(store.home.root)
    behind = engine(store.home, behind_env, "cpu", "--max-batch", "4")
    try:
        wait_for(
            lambda: any(r.status == RunStatus.RUNNING and r.started_at for r in runs_of(store)),
            what="the behind engine generating",
        )
        # It recovers stale workers as it starts: that is where the behind engine was taken for dead.
        ahead = engine(store.home, ahead_env, "cpu:1", "--once", "--max-batch", "4")
        ages = []
        for env in (ahead_env, behind_env, ahead_env):
            out = mtp(env, "--home", home, "workers", "--recover")
            assert out.returncode == 0, out.stderr
            assert "requeued 0 run(s), failed 0 (dead workers: 0)" in out.stdout, out.stdout
            for line in out.stdout.splitlines()[2:]:
                if " dead " in line or " stopped " in line:
                    continue
                m = re.search(r" (-?\d+)(s|m) ago", line)
                assert m, out.stdout
                ages.append(int(m.group(1)) * (60 if m.group(2) == "m" else 1))
        print(f"ages shown by `mtp workers` under skewed clocks: {ages}")
        assert ages and min(ages) >= 0, ages
        if not store.is_sqlite:
            # The server's clock: true ages (heartbeats every 0.1 s). SQLite's clock is each
            # process's own, so there an age can be off by the skew, but never negative.
            assert max(ages) < 60, ages
        err = finish(ahead)
        assert ahead.returncode == 0, err
        wait_for(
            lambda: {r.status for r in runs_of(store)} == {RunStatus.DONE},
            what="the queue to drain",
        )
    finally:
        behind.terminate()
        err = finish(behind)
    runs = runs_of(store)
    charged = [(r.id, r.crashes, r.attempts, r.error) for r in runs if r.crashes or r.attempts != 1]
    print(f"skewed clocks: {len(runs)} runs, {len(charged)} requeued or charged")
    assert charged == []  # 0 live runs requeued, 0 crashes charged
    assert not any(w.status == q.WorkerStatus.DEAD for w in q.list_workers(store))


def test_heartbeats_and_ages_use_the_database_clock(store, monkeypatch):
    """A host clock an hour off changes nothing: heartbeats carry the database's time, and an
    age is never negative even for a heartbeat written after `now` was read."""
    import store.models as models

    wid = q.register_worker(store, "cpu", worker_id="skewed", host="elsewhere", pid=1)
    monkeypatch.setattr(models, "clock_offset", lambda: timedelta(hours=1))
    if not store.is_sqlite:  # SQLite's clock is this process's own (shifted alike)
        assert abs((models.utcnow() - store.now()).total_seconds() - 3600) < 60
    q.heartbeat(store, wid, status=q.WorkerStatus.RUNNING)
    (w,) = q.list_workers(store)
    db_now = q.database_now(store)
    assert 0 <= q.age_s(w.heartbeat_at, db_now) < 60
    assert not q.worker_is_stale(w, 60, db_now)
    assert q.recover_stale(store).dead_workers == []
    assert q.age_s(w.heartbeat_at, db_now - timedelta(seconds=30)) == 0.0  # never negative


def test_the_workers_table_shows_database_ages_never_negative(store):
    import asyncio

    from textual.widgets import DataTable

    from tests.tui import SIZE
    from tests.tui import wait_for as pilot_wait
    from tui.app import MtpApp

    q.register_worker(store, "cuda:0", worker_id="future", host="ahead", pid=7)
    q.register_worker(store, "cuda:1", worker_id="braked", host="ahead", pid=8)
    with store.write() as s:
        # A heartbeat in the future (written by an older engine with its own fast clock).
        s.execute(
            update(WorkerRow)
            .where(WorkerRow.id == "future")
            .values(heartbeat_at=store.now() + timedelta(minutes=5))
        )
    q.heartbeat(store, "braked", status=q.WorkerStatus.PAUSED, message="engine stopped itself: X")

    async def check():
        app = MtpApp(store)
        async with app.run_test(size=SIZE) as pilot:
            await pilot_wait(
                pilot,
                lambda: app.screen.query_one("#workers", DataTable).row_count == 2,
                what="the workers table",
            )
            table = app.screen.query_one("#workers", DataTable)
            rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        return rows

    rows = asyncio.run(check())
    assert all(not cell.startswith("-") or cell == "-" for row in rows for cell in row), rows
    assert any(row[6] == "0s" for row in rows), rows
    assert any("paused: engine stopped itself" in row[2] for row in rows), rows


# ------------------------------------------------------------------ 5. database outages
def test_probes_of_many_engines_at_once_never_collide(store):
    """Each probe writes the same meta key; a read-then-insert made two engines probing at the
    same moment collide on its primary key."""
    stores = [Store(store.home, url=store.url) for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    problems: list = []

    def go(s):
        for _ in range(5):
            barrier.wait()
            problems.append(probe(s, s.home, who=f"w{id(s)}"))

    threads = [threading.Thread(target=go, args=(s,)) for s in stores]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for s in stores:
            s.close()
    assert problems == [None] * 40


def test_database_errors_are_shown_in_words_never_raw():
    from sqlalchemy.exc import IntegrityError, OperationalError

    class Orig(Exception):
        pass

    dup = IntegrityError(
        "INSERT INTO meta (key, value) VALUES (%(key)s, %(value)s)",
        {},
        Orig(
            'duplicate key value violates unique constraint "meta_pkey"\n'
            "DETAIL:  Key (key)=(engine_probe) already exists."
        ),
    )
    refused = OperationalError(
        "SELECT 1",
        {},
        Orig(
            'connection failed: connection to server at "10.0.0.5", port 5432 failed: '
            "Connection refused\n\tIs the server running on that host and accepting TCP/IP?"
        ),
    )
    lost = OperationalError(
        "UPDATE worker SET x=1", {}, Orig("server closed the connection unexpectedly")
    )
    odd = OperationalError("SELECT 1", {}, Orig("something no one has seen before"))
    for exc in (dup, refused, lost, odd):
        for text in (describe_db_error(exc), shown_error(exc)):
            assert not RAW.search(text) and "\n" not in text, text
    assert systemic_reason(refused) == "database unusable: the database server cannot be reached"
    assert "lost" in systemic_reason(lost)
    assert systemic_reason(dup) is None  # a run's own value: its failure, not a pause


@pytest.fixture
def own_pg(tmp_path):
    """A PostgreSQL server of this test alone, so it can be stopped and started again."""
    from tests.pg_server import NoServer, PgServer

    if os.environ.get("MTP_TEST_PG_URL"):
        pytest.skip("an external PostgreSQL server cannot be stopped by the tests")
    try:
        server = PgServer().start()
    except NoServer as exc:
        pytest.skip(f"PostgreSQL: {exc}")
    try:
        yield server
    finally:
        server.stop()


def test_an_engine_paused_by_a_database_outage_resumes_within_seconds(own_pg, tmp_path):
    from store.paths import Home

    url = own_pg.new_database()
    home = Home.resolve(tmp_path / "pg-home")
    store = Store(home, url=url)
    try:
        for seed in range(3):
            make_exp(store, f"e{seed}", seeds=str(seed))  # 24 runs
        config = WorkerConfig(poll_s=0.05, heartbeat_s=0.1, max_batch=4, max_backoff_s=60.0)
        worker = Worker(store, FakeBackend(step_s=0.05), config, score=fake_score, worker_id="pg-w")
        waits: list[float] = []
        real_wait = worker.stop_event.wait

        def spy(timeout=None):
            if worker.progress.status == q.WorkerStatus.PAUSED:
                waits.append(timeout)
            return real_wait(timeout)

        worker.stop_event.wait = spy
        t = threading.Thread(target=worker.run)
        t.start()
        try:
            wait_for(lambda: worker.stats["done"] >= 4, what="some runs done")
            own_pg.halt()
            wait_for(lambda: worker.progress.status == q.WorkerStatus.PAUSED, what="paused")
            time.sleep(6)  # long enough for a 60 s backoff to have grown past 5 s
            reason = worker.fault or ""
            assert reason.startswith("database unusable: the ") and not RAW.search(reason), reason
            own_pg.resume()
            t_back = time.monotonic()
            wait_for(lambda: worker.progress.status != q.WorkerStatus.PAUSED, what="resumed")
            print(f"resumed {time.monotonic() - t_back:.2f}s after the database came back")
            wait_for(
                lambda: {r.status for r in runs_of(store)} == {RunStatus.DONE},
                what="the queue to drain",
            )
            # The pause reason is gone from the Worker row once it resumed.
            (w,) = q.list_workers(store)
            assert w.status != q.WorkerStatus.PAUSED and "unusable" not in w.message, w.message
        finally:
            worker.stop()
            t.join(30)
        # Probed at least every db_backoff_s seconds while the database was away.
        assert waits and max(waits) <= config.db_backoff_s, waits
        runs = runs_of(store)
        assert {r.status for r in runs} == {RunStatus.DONE} and {r.crashes for r in runs} == {0}
    finally:
        store.close()


# ------------------------------------------------------------------ 6. the brake
class OsErrorFlag:
    """Every generation raises the same OSError while the flag file exists (MTP_FAULT=oserror)."""

    def __init__(self, path: Path):
        self.path = path
        path.touch()

    def hook(self, stage, _p):
        if stage == "generate" and self.path.exists():
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))


@pytest.fixture
def sick(tmp_path, monkeypatch):
    f = OsErrorFlag(tmp_path / "sick")
    monkeypatch.setattr(artifacts, "fault_hook", f.hook)
    return f


def serve(store, backend=None, **cfg):
    config = WorkerConfig(poll_s=0.05, heartbeat_s=0.05, max_batch=4, **cfg)
    worker = Worker(store, backend or FakeBackend(), config, score=fake_score, worker_id="w-sick")
    t = threading.Thread(target=worker.run)
    t.start()
    return worker, t


def test_an_engine_failing_every_run_alike_stops_itself_and_gives_the_runs_back(
    store, sick, capsys
):
    from tui.cli.main import main as mtp_main

    for seed in range(4):
        make_exp(store, f"e{seed}", seeds=str(seed))  # 32 runs, 8 per experiment
    worker, t = serve(store)
    try:
        wait_for(lambda: worker.stats.get("brakes"), what="the brake")
        wait_for(lambda: q.list_workers(store)[0].status == q.WorkerStatus.PAUSED, what="shown")
        # The brake gives the runs back as it pauses (the failed ones and the batch it held).
        wait_for(lambda: {r.status for r in runs_of(store)} == {RunStatus.QUEUED}, what="runs back")
        runs = runs_of(store)
        # Given back uncharged: none failed, none charged, no claim counted.
        assert {r.status for r in runs} == {RunStatus.QUEUED}, [(r.id, r.status) for r in runs]
        assert {r.attempts for r in runs} == {0} and {r.crashes for r in runs} == {0}
        assert {r.error for r in runs} == {None}
        reason = worker.fault
        assert reason.startswith("engine stopped itself") and "Too many open files" in reason
        assert "mtp queue resume" in reason
        time.sleep(0.3)
        assert {r.status for r in runs_of(store)} == {RunStatus.QUEUED}  # it takes nothing
        for cmd, shown in (("queue", "PAUSED: engine stopped itself"), ("workers", "paused")):
            assert mtp_main(["--home", str(store.home.root), cmd]) == 0
            out = capsys.readouterr().out
            assert shown in out and "engine stopped itself" in out, out
        # Fixed; `mtp queue resume` wakes it.
        sick.path.unlink()
        assert mtp_main(["--home", str(store.home.root), "queue", "resume"]) == 0
        wait_for(
            lambda: {r.status for r in runs_of(store)} == {RunStatus.DONE},
            what="the queue to drain",
        )
    finally:
        worker.stop()
        t.join(30)
    print(f"brake: stopped after {worker.stats['generate_calls']} generate calls of 32 runs")
    assert worker.stats["brakes"] == 1 and worker.stats["failed"] == 0
    assert {r.attempts for r in runs_of(store)} == {1}


def test_one_experiment_failing_alone_is_not_a_sick_engine(store, sick):
    make_exp(store, "only", seeds="0,1")  # 16 runs of one experiment and one model
    worker, t = serve(store)
    try:
        wait_for(
            lambda: {r.status for r in runs_of(store)} == {RunStatus.FAILED}, what="all failed"
        )
    finally:
        worker.stop()
        t.join(30)
    assert not worker.stats.get("brakes")
    assert all("Too many open files" in r.error and not RAW.search(r.error) for r in runs_of(store))


def test_a_model_that_cannot_be_loaded_fails_its_own_runs_without_the_brake(store):
    for i in range(3):
        make_exp(store, f"m{i}", model=f"missing-{i}", seeds="0")  # 3 models, 3 experiments
    make_exp(store, "fine", seeds="5")
    worker, t = serve(store)
    try:
        wait_for(
            lambda: all(r.status in RunStatus.FINISHED for r in runs_of(store)),
            what="all finished",
        )
    finally:
        worker.stop()
        t.join(30)
    assert not worker.stats.get("brakes")
    by_model = {}
    for r in runs_of(store):
        by_model.setdefault(r.model, set()).add(r.status)
    assert by_model.pop("fake-model") == {RunStatus.DONE}
    assert all(st == {RunStatus.FAILED} for st in by_model.values())


def test_a_sick_engine_process_exits_with_once_and_a_restart_drains(store, tmp_path):
    for seed in range(3):
        make_exp(store, f"e{seed}", seeds=str(seed))  # 24 runs
    flag = tmp_path / "sick"
    flag.touch()
    env = dict(fake_env(tmp_path, step_s=0.0), MTP_FAULT=f"oserror:{flag}")
    once = engine(store.home, env, "cpu", "--once", "--max-batch", "4")
    err = finish(once)
    assert once.returncode != 0 and "engine stopped itself" in err, err
    runs = runs_of(store)
    assert {r.status for r in runs} == {RunStatus.QUEUED} and {r.attempts for r in runs} == {0}
    (w,) = q.list_workers(store)
    assert w.status == q.WorkerStatus.STOPPED and "engine stopped itself" in w.message
    flag.unlink()
    again = engine(store.home, env, "cpu", "--once", "--max-batch", "4")
    err = finish(again)
    assert again.returncode == 0, err
    assert {r.status for r in runs_of(store)} == {RunStatus.DONE}


def test_error_signatures_ignore_paths_and_numbers():
    a = OSError(errno.EMFILE, os.strerror(errno.EMFILE), "/data/a/run-12.png")
    b = OSError(errno.EMFILE, os.strerror(errno.EMFILE), "/other/place/run-345.png")
    assert error_signature(a) == error_signature(b)
    assert error_signature(a) != error_signature(RuntimeError(str(a)))
    assert error_signature(EngineFault("x")) != error_signature(a)
