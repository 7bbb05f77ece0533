"""The queue: atomic claims, grouping and ordering, cancel/requeue/pause/priority, recovery."""

from __future__ import annotations

import os
import threading
from datetime import timedelta

import pytest
from sqlmodel import select

from store import queue as q
from store.models import Experiment, ExperimentStatus, Run, RunStatus, Score, Worker, utcnow
from store.queries import save_experiment
from store.sweep.spec import ExperimentSpec

# Each test that uses `home` or `store` runs on SQLite and on a real PostgreSQL server (tests/conftest.py).
DB_BACKENDS = ("sqlite", "postgresql")


def make_exp(
    store, name="exp", model="tiny-model", seeds="0", final_step="2,3,end", priority=0, **kw
):
    spec = ExperimentSpec(
        model=model,
        source_prompt="a photo of a dog",
        target_prompts=["a dog on the beach"],
        num_steps=4,
        width=64,
        height=64,
        seeds=seeds,
        start_step="1",
        final_step=final_step,
        baseline=kw.pop("baseline", True),
        **kw,
    )
    return save_experiment(store, name, spec, queue=True, priority=priority)


def runs_of(store, exp_id=None):
    with store.session() as s:
        stmt = select(Run).order_by(Run.id)
        if exp_id is not None:
            stmt = stmt.where(Run.experiment_id == exp_id)
        return list(s.exec(stmt))


def test_claim_takes_one_group_and_marks_it(store):
    exp = make_exp(store, seeds="0,1")  # two groups (one per seed) of 4 runs
    runs = q.claim_group(store, "w1", max_batch=8)
    assert len(runs) == 4
    assert len({r.group_key for r in runs}) == 1
    assert all(
        r.status == RunStatus.RUNNING and r.worker_id == "w1" and r.attempts == 1 and r.claimed_at
        for r in runs
    )
    rest = q.claim_group(store, "w2", max_batch=8)
    assert len(rest) == 4 and not {r.id for r in rest} & {r.id for r in runs}
    assert q.claim_group(store, "w3") == []
    assert exp.status == ExperimentStatus.QUEUED


def test_claim_respects_max_batch(store):
    make_exp(store, final_step="2,3,end")
    assert len(q.claim_group(store, "w", max_batch=3)) == 3
    assert len(q.claim_group(store, "w", max_batch=3)) == 1


def test_claim_prefers_loaded_model_then_priority_then_age(store):
    old = make_exp(store, "old", model="model-a")
    high = make_exp(store, "high", model="model-b", priority=5)
    first = q.claim_group(store, "w")
    assert first[0].experiment_id == high.id  # higher priority wins without a loaded model
    q.release_runs(store, "w", [r.id for r in first])
    loaded = q.ModelKey("model-a", "none", None)
    assert q.claim_group(store, "w", loaded=loaded)[0].experiment_id == old.id  # no model switch
    assert q.claim_group(store, "w", loaded=loaded)[0].experiment_id == high.id


def test_concurrent_claims_never_overlap(home):
    from store.db import Store

    setup = Store(home)
    for i in range(6):
        make_exp(setup, f"e{i}", seeds="0,1,2")  # 18 groups, 72 runs
    setup.close()
    claimed: dict[str, list[int]] = {}
    errors = []

    def claimer(name):
        st = Store(home)
        mine = claimed.setdefault(name, [])
        try:
            while True:
                runs = q.claim_group(st, name, max_batch=2)
                if not runs:
                    return
                mine += [r.id for r in runs]
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)
        finally:
            st.close()

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    all_ids = [i for ids in claimed.values() for i in ids]
    assert len(all_ids) == len(set(all_ids)) == 72


def test_paused_queue_claims_nothing(store):
    make_exp(store)
    q.set_paused(store, True)
    assert q.is_paused(store)
    assert q.claim_group(store, "w") == []
    q.set_paused(store, False)
    assert q.claim_group(store, "w")


def test_cancel_queued_and_running(store):
    exp = make_exp(store, seeds="0,1")
    running = q.claim_group(store, "w")
    res = q.cancel_experiment(store, exp.id)
    assert res == {"cancelled": 4, "requested": 4}
    rows = runs_of(store)
    assert {r.status for r in rows if r.id not in {x.id for x in running}} == {RunStatus.CANCELLED}
    assert all(
        r.cancel_requested and r.status == RunStatus.RUNNING
        for r in rows
        if r.id in {x.id for x in running}
    )
    assert q.cancel_requested_ids(store, [r.id for r in running]) == {r.id for r in running}
    # The worker notices and ends them; the experiment is then finished.
    q.fail_runs(store, "w", [r.id for r in running], "cancelled by the user while running")
    assert {r.status for r in runs_of(store)} == {RunStatus.CANCELLED}
    with store.session() as s:
        assert s.get(Experiment, exp.id).status == ExperimentStatus.DONE


def test_cancel_single_runs(store):
    make_exp(store)
    ids = [r.id for r in runs_of(store)]
    assert q.cancel_runs(store, ids[:2]) == {"cancelled": 2, "requested": 0}
    assert len(q.claim_group(store, "w")) == 2


def test_requeue_failed_and_cancelled_clears_errors_and_scores(store):
    exp = make_exp(store)
    runs = q.claim_group(store, "w")
    done = q.complete_runs(
        store,
        "w",
        [
            {
                "run_id": runs[0].id,
                "image_path": "x.png",
                "scores": [{"metric": "clip_t", "backbone": "b", "value": 0.3}],
            }
        ],
    )
    assert done == [runs[0].id]
    q.fail_runs(store, "w", [runs[1].id], "boom")
    q.cancel_runs(store, [runs[2].id, runs[3].id])
    q.fail_runs(store, "w", [runs[2].id, runs[3].id], "cancelled")
    statuses = {r.id: r.status for r in runs_of(store)}
    assert statuses[runs[1].id] == RunStatus.FAILED and statuses[runs[2].id] == RunStatus.CANCELLED
    assert next(r for r in runs_of(store) if r.id == runs[1].id).error == "boom"
    with store.session() as s:
        assert s.get(Experiment, exp.id).status == ExperimentStatus.DONE

    assert q.requeue(store, exp.id) == 3
    rows = {r.id: r for r in runs_of(store)}
    assert rows[runs[0].id].status == RunStatus.DONE
    for rid in (runs[1].id, runs[2].id, runs[3].id):
        assert (
            rows[rid].status == RunStatus.QUEUED
            and rows[rid].error is None
            and rows[rid].attempts == 0
        )
    with store.session() as s:
        assert s.get(Experiment, exp.id).status == ExperimentStatus.QUEUED

    assert q.requeue_runs(store, [runs[0].id]) == 1  # a done run can be redone; its scores go
    with store.session() as s:
        assert s.exec(select(Score).where(Score.run_id == runs[0].id)).all() == []
    assert q.requeue_runs(store, [runs[0].id]) == 0  # already queued


def test_complete_skips_runs_no_longer_owned(store):
    make_exp(store)
    runs = q.claim_group(store, "w1")
    q.release_runs(store, "w1", [r.id for r in runs])
    again = q.claim_group(store, "w2")
    assert q.complete_runs(store, "w1", [{"run_id": r.id} for r in again]) == []
    assert len(q.complete_runs(store, "w2", [{"run_id": r.id} for r in again])) == 4


def test_release_does_not_count_the_attempt(store):
    make_exp(store)
    runs = q.claim_group(store, "w")
    q.release_runs(store, "w", [r.id for r in runs])
    assert {r.attempts for r in runs_of(store)} == {0}
    assert {r.status for r in runs_of(store)} == {RunStatus.QUEUED}


def test_set_priority_moves_queued_runs(store):
    a = make_exp(store, "a", seeds="1")
    b = make_exp(store, "b", seeds="2")  # another source: equal settings would share one batch
    assert q.set_priority(store, b.id, 10) == 4
    assert q.claim_group(store, "w")[0].experiment_id == b.id
    with store.session() as s:
        assert s.get(Experiment, b.id).priority == 10
    assert q.claim_group(store, "w")[0].experiment_id == a.id


def _age_heartbeat(store, worker_id, seconds):
    with store.write() as s:
        w = s.get(Worker, worker_id)
        w.heartbeat_at = utcnow() - timedelta(seconds=seconds)
        s.add(w)


def test_stale_heartbeat_requeues_then_fails_after_max_in_flight_deaths(store):
    # Only deaths with the run in flight count (Run.crashes), not claims: an engine killed while
    # loading must not fail a run it merely claimed.
    make_exp(store, final_step="end", baseline=False)  # one run
    for attempt in (1, 2, 3):
        wid = q.register_worker(
            store, "cpu", worker_id=f"h:1:cpu:{attempt}", host="other-host", pid=1
        )
        runs = q.claim_group(store, wid)
        assert [r.attempts for r in runs] == [attempt]
        q.mark_in_flight(store, wid, [r.id for r in runs])
        # A live worker is left alone.
        assert q.recover_stale(store, stale_after_s=60).requeued == []
        _age_heartbeat(store, wid, 120)
        rec = q.recover_stale(store, stale_after_s=60, max_attempts=3)
        assert wid in rec.dead_workers
        run = runs_of(store)[0]
        assert run.crashes == attempt
        if attempt < 3:
            assert rec.requeued == [run.id] and run.status == RunStatus.QUEUED
            assert run.attempts == attempt  # kept, so a run that keeps killing workers ends
            assert "stopped responding while generating it" in run.error
        else:
            assert rec.failed == [run.id] and run.status == RunStatus.FAILED
            assert run.error.startswith("3 engines died in a row while generating this run")
            assert "likely crashes the engine" in run.error
    assert {w.status for w in q.list_workers(store)} == {q.WorkerStatus.DEAD}
    q.recover_stale(store, forget_after_s=100)  # long-dead workers leave the registry
    assert q.list_workers(store) == []


def test_deaths_before_generation_never_fail_a_run(store):
    # Killed during model load, or restarted by hand before generating: not the run's fault.
    make_exp(store, final_step="end", baseline=False)
    for i in range(10):
        wid = q.register_worker(store, "cpu", worker_id=f"h:1:cpu:{i}", host="other-host", pid=1)
        assert len(q.claim_group(store, wid)) == 1
        _age_heartbeat(store, wid, 120)
        assert q.recover_stale(store, stale_after_s=60, max_attempts=3).failed == []
    run = runs_of(store)[0]
    assert run.status == RunStatus.QUEUED and run.crashes == 0 and "not counted" in run.error


def test_a_run_in_flight_when_an_engine_died_is_claimed_alone(store):
    make_exp(store, final_step="2,3,end", baseline=False)  # three runs, one group
    wid = q.register_worker(store, "cpu", worker_id="h:1:cpu", host="other-host", pid=1)
    runs = q.claim_group(store, wid)
    q.mark_in_flight(store, wid, [runs[0].id])
    q.release_runs(store, wid, [r.id for r in runs[1:]])
    _age_heartbeat(store, wid, 120)
    q.recover_stale(store, stale_after_s=60)
    # Healthy runs first (without the suspect), then the suspect alone.
    assert [r.id for r in q.claim_group(store, "w2", max_batch=8)] == [r.id for r in runs[1:]]
    assert [r.id for r in q.claim_group(store, "w3", max_batch=8)] == [runs[0].id]


def test_a_death_with_batch_mates_in_flight_charges_none_and_each_is_retried_alone(store):
    """Which of a batch killed the engine is unknown: nobody is charged, each runs alone next,
    and only a death while a run is alone is charged to it."""
    make_exp(store, final_step="2,3,end", baseline=False)  # three runs, one group
    dead = q.register_worker(store, "cpu", worker_id="h:1:cpu", host="other-host", pid=1)
    runs = q.claim_group(store, dead)
    assert len(runs) == 3
    q.mark_in_flight(store, dead, [r.id for r in runs])
    _age_heartbeat(store, dead, 120)
    rec = q.recover_stale(store, stale_after_s=60, max_attempts=1)
    assert sorted(rec.requeued) == sorted(r.id for r in runs) and rec.failed == []
    after = runs_of(store)
    assert {(r.crashes, r.solo) for r in after} == {(0, True)}
    assert all("not counted: retried alone" in r.error for r in after)
    # each alone, in the queue's order; the second one dies alone and is charged
    w2 = q.register_worker(store, "cpu", worker_id="h:2:cpu", host="other-host", pid=1)
    (first,) = q.claim_group(store, w2, max_batch=8)
    q.mark_in_flight(store, w2, [first.id])
    _age_heartbeat(store, w2, 120)
    q.recover_stale(store, stale_after_s=60)
    charged = next(r for r in runs_of(store) if r.id == first.id)
    assert charged.crashes == 1 and "engine death 1" in charged.error
    others = [r.id for r in runs if r.id != first.id]
    claimed = [q.claim_group(store, f"w{i}", max_batch=8) for i in range(2)]
    assert sorted(r.id for c in claimed for r in c) == others and all(len(c) == 1 for c in claimed)
    # a requeue by hand starts afresh
    assert q.requeue_runs(store, []) == 0


def test_dead_pid_on_this_host_is_recovered_at_once(store):
    import subprocess
    import sys

    make_exp(store)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    wid = q.register_worker(store, "cpu", pid=proc.pid)
    q.claim_group(store, wid)
    rec = q.recover_stale(store, stale_after_s=3600)
    assert len(rec.requeued) == 4
    me = q.register_worker(store, "cpu", worker_id="me", pid=os.getpid())
    q.claim_group(store, me)
    assert q.recover_stale(store, stale_after_s=3600).requeued == []


def test_heartbeat_updates_progress(store):
    wid = q.register_worker(store, "cuda:0")
    q.heartbeat(
        store, wid, status="running", current_run_id=7, step=3, total_steps=50, its_per_s=2.5
    )
    (w,) = q.list_workers(store)
    assert (w.status, w.current_run_id, w.step, w.total_steps, w.its_per_s) == (
        "running",
        7,
        3,
        50,
        2.5,
    )
    st = q.queue_status(store)
    assert st.workers[0].id == wid and not st.paused


def _claim_until_empty(home_root, db_url, name, out):
    # A separate process, as an engine on another host would be.
    from store.db import Store
    from store.paths import Home

    st = Store(Home.resolve(home_root), url=db_url)
    mine = []
    try:
        while runs := q.claim_group(st, name, max_batch=2):
            mine += [r.id for r in runs]
    finally:
        st.close()
    out.put((name, mine))


@pytest.mark.subprocess
def test_claims_from_four_processes_take_each_run_once(home):
    import multiprocessing as mp

    from store.db import Store

    setup = Store(home)
    for i in range(6):
        make_exp(setup, f"e{i}", seeds="0,1,2")  # 18 groups, 72 runs
    setup.close()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=_claim_until_empty,
            args=(str(home.root), os.environ.get("MTP_DB_URL"), f"p{i}", out),
        )
        for i in range(4)
    ]
    for p in procs:
        p.start()
    claimed = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    all_ids = [i for ids in claimed.values() for i in ids]
    assert len(all_ids) == len(set(all_ids)) == 72
    st = Store(home)
    try:  # the record agrees with what each process was handed
        owner = {r.id: r.worker_id for r in runs_of(st)}
        assert all(owner[i] == name for name, ids in claimed.items() for i in ids)
        assert {r.attempts for r in runs_of(st)} == {1}
    finally:
        st.close()


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
def test_a_claim_skips_runs_locked_by_a_claim_in_progress(store):
    """PostgreSQL: while one engine's claim transaction holds its runs, another engine's claim
    takes the next group at once instead of waiting for (or double-claiming) the locked one."""
    a = make_exp(store, "a", seeds="0")
    b = make_exp(store, "b", seeds="1")
    with store.write() as held:
        locked = held.exec(select(Run).where(Run.experiment_id == a.id).with_for_update()).all()
        result: list = []
        t = threading.Thread(
            target=lambda: result.append(q.claim_group(store, "other", max_batch=8))
        )
        t.start()
        t.join(60)
        assert not t.is_alive(), "the claim waited on the locked rows (no SKIP LOCKED)"
    assert {r.experiment_id for r in result[0]} == {b.id}
    assert not {r.id for r in result[0]} & {r.id for r in locked}
    assert {r.experiment_id for r in q.claim_group(store, "again", max_batch=8)} == {a.id}


def test_queue_commands(store, capsys):
    from tui.cli.main import main

    exp = make_exp(store, "cli-exp")
    home = ["--home", str(store.home.root)]
    assert main(home + ["queue", "pause"]) == 0 and q.is_paused(store)
    assert main(home + ["queue", "resume"]) == 0 and not q.is_paused(store)
    assert main(home + ["priority", "cli-exp", "7"]) == 0
    assert {r.priority for r in runs_of(store)} == {7}
    assert main(home + ["cancel", str(exp.id)]) == 0
    assert {r.status for r in runs_of(store)} == {RunStatus.CANCELLED}
    assert main(home + ["requeue", "cli-exp", "--status", "cancelled"]) == 0
    assert {r.status for r in runs_of(store)} == {RunStatus.QUEUED}
    first = runs_of(store)[0].id
    assert main(home + ["cancel", "--run", str(first)]) == 0
    assert main(home + ["requeue", "--run", str(first)]) == 0
    assert main(home + ["requeue", "cli-exp", "--status", "running"]) == 2  # not a finished status
    assert main(home + ["cancel", "no-such-experiment"]) == 2
    assert main(home + ["workers"]) == 0
    assert main(home + ["engine", "status"]) == 1  # none running
    out = capsys.readouterr().out
    assert "queue paused" in out and "requeued 4 run(s)" in out and "no engine is running" in out


@pytest.mark.subprocess
def test_queue_and_launch_stay_torch_free():
    import subprocess
    import sys

    code = (
        "import sys, engine.cli, engine.launch, store.queue, tui.cli.queue; engine.cli.build_parser(); "
        "sys.exit(1 if {'torch', 'diffusers', 'transformers'} & set(sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
