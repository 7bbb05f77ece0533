"""The worker under bad input and a bad machine, in process: poison images fail only their own
runs, failures are per run and per concept, and a full, read-only or unwritable store pauses
the engine without losing or failing a run."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from sqlmodel import select

from engine import artifacts
from engine.backends.fake import FakeBackend, fake_score
from engine.worker import Worker, WorkerConfig
from store import queue as q
from store.models import Run, RunStatus, Score
from store.queries import save_concept, save_experiment
from store.sweep.spec import ExperimentSpec
from tests.engine.test_worker import drain, runs_of
from tests.poison import POISONS, good_png


# ------------------------------------------------------------------ helpers
def spec(**kw) -> ExperimentSpec:
    base = dict(
        model="fake-model",
        source_prompt="a photo of a dog",
        target_prompts=["a dog on the beach"],
        num_steps=4,
        width=64,
        height=64,
        seeds="0",
        layers="decoder",
        start_step="1",
        final_step="2,end",
        baseline=False,
    )
    base.update(kw)
    return ExperimentSpec(**base)


def wait_for(pred, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def serving(store, backend, **cfg):
    config = WorkerConfig(poll_s=0.05, heartbeat_s=0.05, max_backoff_s=0.2, **cfg)
    worker = Worker(store, backend, config, score=fake_score, worker_id="w-serve")
    t = threading.Thread(target=worker.run)
    t.start()
    try:
        yield worker
    finally:
        worker.stop()
        t.join(20)
    assert not t.is_alive()


def assert_each_done_once(store, n: int) -> None:
    runs = runs_of(store)
    assert len(runs) == n and {r.status for r in runs} == {RunStatus.DONE}, [
        (r.id, r.status, r.error) for r in runs
    ]
    with store.session() as s:
        per_run = {r.id: 0 for r in runs}
        for sc in s.exec(select(Score)):
            per_run[sc.run_id] += 1
    assert set(per_run.values()) == {1}


# ------------------------------------------------------------------ poison inputs
@pytest.mark.parametrize("kind", sorted(POISONS))
def test_check_image_refuses_every_kind_of_poison(tmp_path, kind):
    from store.images import InputError, check_image

    bad = tmp_path / f"{kind}.png"
    POISONS[kind](bad)
    with pytest.raises(InputError, match=f"{kind}.png: "):
        check_image(bad)


def test_poison_source_images_fail_only_their_own_runs_and_the_queue_drains(store, tmp_path):
    # Creation refuses them now, so the stored copies go bad afterwards (disk damage, an old database).
    good = good_png(tmp_path / "src.png")
    poisoned = {}
    for kind, make in POISONS.items():
        exp = save_experiment(
            store,
            kind,
            spec(source_image=str(good), invert=True, seeds=str(len(poisoned))),
            queue=True,
        )
        target = tmp_path / f"copy-{kind}.png"
        make(target)
        with store.write() as s:
            for run in s.exec(select(Run).where(Run.experiment_id == exp.id)):
                run.source_image = str(target)
                s.add(run)
        poisoned[exp.id] = target
    fine = save_experiment(
        store, "fine", spec(source_image=str(good), invert=True, seeds="99"), queue=True
    )
    worker = drain(store, FakeBackend())
    for exp_id, path in poisoned.items():
        runs = runs_of(store, exp_id)
        assert {r.status for r in runs} == {RunStatus.FAILED}
        assert all(r.error.startswith("source image") and str(path) in r.error for r in runs)
        assert {r.attempts for r in runs} == {1}  # failed at the first claim, never handed back
    assert {r.status for r in runs_of(store, fine.id)} == {RunStatus.DONE}
    assert worker.stats["failed"] == 2 * len(POISONS) and worker.fault is None


def test_creation_refuses_poison_sources_and_copies_good_ones(store, tmp_path):
    from store.queries import InputError

    for kind, make in POISONS.items():
        bad = tmp_path / f"{kind}.png"
        make(bad)
        with pytest.raises(InputError, match=f"source image: .*{kind}.png"):
            save_experiment(store, kind, spec(source_image=str(bad), invert=True), queue=True)
    assert runs_of(store) == []
    good = good_png(tmp_path / "src.png")
    exp = save_experiment(store, "ok", spec(source_image=str(good), invert=True), queue=True)
    good.unlink()  # the user's file may go away: the data folder has its own copy
    (stored,) = {r.source_image for r in runs_of(store, exp.id)}
    assert not Path(stored).is_absolute() and (store.home.root / stored).is_file()
    drain(store, FakeBackend())
    assert {r.status for r in runs_of(store, exp.id)} == {RunStatus.DONE}


def test_an_exception_anywhere_while_runs_are_claimed_counts_against_them(store):
    class BrokenBlocks(FakeBackend):
        def blocks(self):  # raised outside generation, while controls are built
            raise RuntimeError("blocks exploded")

    exp = save_experiment(store, "e", spec(), queue=True)
    worker = drain(store, BrokenBlocks())
    runs = runs_of(store, exp.id)
    assert {r.status for r in runs} == {RunStatus.FAILED}
    assert all(r.error == "RuntimeError: blocks exploded" and r.attempts == 1 for r in runs)
    assert worker.fault is None


def test_one_bad_target_in_a_batch_fails_alone(store):
    exp = save_experiment(
        store, "mixed", spec(target_prompts=["a dog on the beach", "explode"]), queue=True
    )
    backend = FakeBackend(fail={"explode": KeyError("surprise")})
    drain(store, backend, max_batch=8)
    assert len(backend.calls[0][1]) == 4  # one batch first, then one run at a time
    for r in runs_of(store, exp.id):
        if r.target_prompt == "explode":
            assert r.status == RunStatus.FAILED and r.error == "KeyError: 'surprise'"
        else:
            assert r.status == RunStatus.DONE, r.error


def test_mixed_concept_batch_with_one_bad_concept(store, tmp_path):
    bad_ref = good_png(tmp_path / "a.png")
    a = save_concept(
        store, "a", token="sks", class_word="dog", ref_images=[bad_ref], check_model=False
    )
    b = save_concept(
        store,
        "b",
        token="sks",
        class_word="dog",
        ref_images=[good_png(tmp_path / "b.png")],
        check_model=False,
    )
    POISONS["bomb"](store.home.root / a.ref_images[0])  # the stored copy of A's reference went bad
    ea = save_experiment(store, "ea", spec(), concept_id=a.id, queue=True)
    eb = save_experiment(store, "eb", spec(), concept_id=b.id, queue=True)
    backend = FakeBackend()
    drain(store, backend, max_batch=8)
    assert len(backend.calls) == 1 and len(backend.calls[0][1]) == 4  # both concepts in one batch
    # Scoring A failed: A's runs keep their images, done and "not scored" with the reason;
    # B's runs are untouched by A's error.
    assert all(
        r.status == RunStatus.DONE and r.score_error.startswith("reference image")
        for r in runs_of(store, ea.id)
    )
    assert all(r.status == RunStatus.DONE and r.score_error is None for r in runs_of(store, eb.id))


def test_an_extreme_reference_fails_no_batchmate_and_charges_no_crash(store, tmp_path):
    """A concept whose stored reference is 30000x1 (saved before the shape rule, or replaced in
    the data folder) shares a batch with a concept whose reference is the widest accepted shape:
    the first concept's runs end done and not scored, saying why; the second's are scored on
    the real tiny CLIP/DINO; nothing fails, nothing is charged a crash, one generation call."""
    from PIL import Image

    from engine.cli import LazyScorer
    from store.images import MAX_ASPECT

    a = save_concept(store, "a", "sks", "dog", [good_png(tmp_path / "a.png")], check_model=False)
    wide = tmp_path / "wide.png"
    Image.new("RGB", (256 * MAX_ASPECT, 256), (90, 60, 30)).save(wide)
    b = save_concept(store, "b", "sks", "dog", [wide], check_model=False)
    Image.new("RGB", (30000, 1)).save(store.home.root / a.ref_images[0])
    ea = save_experiment(store, "ea", spec(), concept_id=a.id, queue=True)
    eb = save_experiment(store, "eb", spec(), concept_id=b.id, queue=True)
    backend = FakeBackend()
    worker = Worker(
        store,
        backend,
        WorkerConfig(once=True, heartbeat_s=0.2, poll_s=0.05, max_batch=8),
        score=LazyScorer(store.home, demo=True, device="cpu"),
        worker_id="w-extreme",
    )
    worker.run()
    assert len(backend.calls) == 1 and len(backend.calls[0][1]) == 4  # one batch, both concepts
    for r in runs_of(store, ea.id):
        assert r.status == RunStatus.DONE and r.error is None and r.crashes == 0
        assert r.score_error.startswith("reference image ") and (
            "not a usable image shape (30000x1 pixels)" in r.score_error
        ), r.score_error
    with store.session() as s:
        for r in runs_of(store, eb.id):
            assert r.status == RunStatus.DONE and r.score_error is None and r.crashes == 0
            metrics = {sc.metric for sc in s.exec(select(Score).where(Score.run_id == r.id))}
            assert {"clip_i_ref", "dino_ref"} <= metrics


def test_one_runs_scoring_failure_leaves_its_concept_mates_scored(store, tmp_path):
    def score(images, texts, source, refs):
        if any("explode" in t for t in texts):
            raise ValueError("this image cannot be scored")
        return fake_score(images, texts, source, refs)

    exp = save_experiment(
        store, "e", spec(target_prompts=["a dog on the beach", "explode"]), queue=True
    )
    backend = FakeBackend()
    config = WorkerConfig(once=True, heartbeat_s=0.2, poll_s=0.05, max_batch=8)
    Worker(store, backend, config, score=score, worker_id="w-one").run()
    assert len(backend.calls) == 1  # scoring failures never regenerate anything
    runs = runs_of(store, exp.id)
    assert {r.status for r in runs} == {RunStatus.DONE}
    for r in runs:
        if r.target_prompt == "explode":
            assert r.score_error == "ValueError: this image cannot be scored"
        else:
            assert r.score_error is None


# ------------------------------------------------------------------ a bad machine
class Flag:
    """A fault that lasts while the flag file exists, raised where artifacts are written."""

    def __init__(self, path: Path):
        self.path, self.errno = path, errno.ENOSPC
        path.touch()

    def hook(self, stage, p):
        if stage == "write" and self.path.exists():
            raise OSError(self.errno, os.strerror(self.errno), str(p))

    def clear(self):
        self.path.unlink()


@pytest.fixture
def flag(tmp_path, monkeypatch):
    f = Flag(tmp_path / "fault-on")
    monkeypatch.setattr(artifacts, "fault_hook", f.hook)
    return f


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_unwritable_artifacts_pause_the_engine_then_it_resumes(store, flag, code):
    flag.errno = code
    save_experiment(store, "e", spec(seeds="0-2"), queue=True)  # 6 runs in 3 groups
    with serving(store, FakeBackend()) as worker:
        wait_for(
            lambda: any(w.status == q.WorkerStatus.PAUSED for w in q.list_workers(store)),
            what="paused",
        )
        (w,) = q.list_workers(store)
        assert os.strerror(code) in w.message and str(store.home.artifacts) in w.message
        time.sleep(0.5)  # several probes while paused
        runs = runs_of(store)
        assert {r.status for r in runs} == {RunStatus.QUEUED}  # nothing failed, nothing held
        assert {r.crashes for r in runs} == {0}
        flag.clear()
        wait_for(
            lambda: {r.status for r in runs_of(store)} == {RunStatus.DONE},
            what="the queue to drain",
        )
        wait_for(lambda: q.list_workers(store)[0].status == q.WorkerStatus.IDLE, what="idle again")
    assert worker.stats["pauses"] >= 1 and worker.stats["failed"] == 0
    assert_each_done_once(store, 6)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a read-only mode")
def test_read_only_artifacts_folder_pauses_the_engine(store):
    save_experiment(store, "e", spec(), queue=True)
    store.home.artifacts.chmod(0o500)
    try:
        with serving(store, FakeBackend()):
            wait_for(
                lambda: any(w.status == q.WorkerStatus.PAUSED for w in q.list_workers(store)),
                what="paused",
            )
            assert {r.status for r in runs_of(store)} == {RunStatus.QUEUED}
            store.home.artifacts.chmod(0o700)
            wait_for(
                lambda: {r.status for r in runs_of(store)} == {RunStatus.DONE},
                what="the queue to drain",
            )
    finally:
        store.home.artifacts.chmod(0o700)


def test_once_stops_with_the_reason_and_leaves_runs_queued(store, flag):
    save_experiment(store, "e", spec(), queue=True)
    worker = drain(store, FakeBackend())
    assert worker.fault and "No space left on device" in worker.fault
    assert {r.status for r in runs_of(store)} == {RunStatus.QUEUED}
    (w,) = q.list_workers(store)
    assert w.status == q.WorkerStatus.STOPPED and "No space left" in w.message


def test_full_database_pauses_holds_nothing_and_resumes(store, monkeypatch):
    full = threading.Event()
    real_write = store.write

    @contextmanager
    def write():
        if full.is_set():
            raise OperationalError(
                "INSERT ...", {}, sqlite3.OperationalError("database or disk is full")
            )
        with real_write() as s:
            yield s

    monkeypatch.setattr(store, "write", write)
    save_experiment(store, "e", spec(seeds="0-3"), queue=True)  # 8 runs in 4 groups
    with serving(store, FakeBackend(step_s=0.05)) as worker:
        wait_for(
            lambda: any(r.status == RunStatus.RUNNING for r in runs_of(store)),
            what="a claimed batch",
        )
        full.set()  # every write fails now: commit, fail, release and heartbeat alike
        wait_for(lambda: worker.progress.status == q.WorkerStatus.PAUSED, what="paused")
        # In words, without the driver's text or SQL (those are in the log).
        assert "disk is full" in worker.fault and "INSERT" not in worker.fault
        time.sleep(0.4)
        assert not any(r.status == RunStatus.FAILED for r in runs_of(store))
        full.clear()
        wait_for(
            lambda: {r.status for r in runs_of(store)} == {RunStatus.DONE},
            what="the queue to drain",
        )
    assert worker.stats["failed"] == 0
    assert_each_done_once(store, 8)


def test_deleted_database_file_pauses_the_engine(store, tmp_path):
    save_experiment(store, "e", spec(), queue=True)
    db = store.home.db_path
    with serving(store, FakeBackend()) as worker:
        wait_for(
            lambda: {r.status for r in runs_of(store)} == {RunStatus.DONE}, what="the first drain"
        )
        moved = tmp_path / "moved.db"
        os.rename(db, moved)
        wait_for(lambda: worker.progress.status == q.WorkerStatus.PAUSED, what="paused")
        assert "is gone" in worker.fault
        os.rename(moved, db)
        wait_for(lambda: worker.progress.status == q.WorkerStatus.IDLE, what="resumed")


def test_a_value_the_database_refuses_fails_its_run_and_does_not_pause(store):
    def nan_for_one(images, texts, source, refs):
        return [
            [
                {
                    "metric": "fake",
                    "backbone": "none",
                    "value": float("nan") if t == "nan score" else 0.5,
                    "preprocess": "",
                    "scored_text": t,
                }
            ]
            for t in texts
        ]

    exp = save_experiment(
        store, "e", spec(target_prompts=["a dog on the beach", "nan score"]), queue=True
    )
    worker = Worker(
        store,
        FakeBackend(),
        WorkerConfig(once=True, heartbeat_s=0.2, poll_s=0.05),
        score=nan_for_one,
        worker_id="w-nan",
    )
    worker.run()
    assert worker.fault is None and worker.stats["pauses"] == 0
    for r in runs_of(store, exp.id):
        assert r.status == (
            RunStatus.FAILED if r.target_prompt == "nan score" else RunStatus.DONE
        ), r.error


def _done_ids_seen_by_a_new_process(db: Path) -> list[int]:
    """Run ids done in mtp.db as another process reads it (not this one's open connections)."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "print(json.dumps([r[0] for r in c.execute(\"SELECT id FROM run WHERE status='done' "
        'ORDER BY id")]))'
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_unreadable_database_file_pauses_the_engine_and_loses_nothing(store):
    """chmod 000 on mtp.db: the open connection would go on committing where nobody else can
    read; the engine pauses instead, and resumes when the permissions are back."""
    save_experiment(store, "e", spec(seeds="0-5"), queue=True)  # 12 runs in 6 groups
    db = store.home.db_path
    with serving(store, FakeBackend(step_s=0.02), max_batch=1) as worker:
        wait_for(lambda: worker.stats["done"] >= 2, what="some runs done")
        db.chmod(0)
        try:
            wait_for(lambda: worker.progress.status == q.WorkerStatus.PAUSED, what="paused")
            assert "no longer readable and writable" in worker.fault and str(db) in worker.fault
            done_at_pause = worker.stats["done"]
            time.sleep(0.4)
            assert worker.stats["done"] == done_at_pause  # nothing committed while paused
            assert {r.status for r in runs_of(store)} <= {RunStatus.DONE, RunStatus.QUEUED}
        finally:
            db.chmod(0o644)
        wait_for(
            lambda: {r.status for r in runs_of(store)} == {RunStatus.DONE},
            what="the queue to drain",
        )
    assert_each_done_once(store, 12)
    assert _done_ids_seen_by_a_new_process(db) == [r.id for r in runs_of(store)]


def test_deleted_wal_file_pauses_the_engine_and_every_commit_is_saved(store, caplog):
    """The -wal deleted under the engine: other processes get "disk I/O error" while the engine's
    connection still commits into the unlinked log. The engine sees it, checkpoints what only it
    can still read into mtp.db, reconnects and goes on: no commit is lost."""
    import subprocess
    import sys

    save_experiment(store, "e", spec(seeds="0-5"), queue=True)  # 12 runs in 6 groups
    db = store.home.db_path
    # Another process with the database open (the app, say): so the engine is never the last
    # to close it, which would checkpoint the log by itself.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('SELECT count(*) FROM meta').fetchone(); print('open', flush=True); "
            "time.sleep(120)",
            str(db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with serving(store, FakeBackend(step_s=0.02), max_batch=1) as worker:
            wait_for(lambda: worker.stats["done"] >= 2, what="some runs done")
            os.unlink(f"{db}-wal")
            wait_for(lambda: worker.stats["pauses"] >= 1, what="the pause")
            wait_for(
                lambda: {r.status for r in runs_of(store)} == {RunStatus.DONE},
                what="the queue to drain",
            )
    finally:
        holder.kill()
        holder.wait()
    assert "-wal was deleted while the engine had it open" in caplog.text
    assert_each_done_once(store, 12)
    store.close()
    # What the engine committed, before and after the deletion, is in the file others read.
    assert _done_ids_seen_by_a_new_process(db) == list(range(1, 13))


def test_deleted_database_file_is_saved_aside_and_moving_it_back_resumes(store):
    """mtp.db deleted (not moved) under the engine: only its open connection still has the
    record. It pauses, writes that record next to the path, says where, and resumes once the
    copy is moved back; nothing it committed is lost."""
    save_experiment(store, "e", spec(seeds="0-5"), queue=True)  # 12 runs in 6 groups
    db = store.home.db_path
    with serving(store, FakeBackend(step_s=0.02), max_batch=1) as worker:
        wait_for(lambda: worker.stats["done"] >= 2, what="some runs done")
        os.unlink(db)
        wait_for(lambda: worker.progress.status == q.WorkerStatus.PAUSED, what="paused")
        wait_for(lambda: "saved in" in (worker.fault or ""), what="the copy")
        done = worker.stats["done"]
        (saved,) = db.parent.glob("mtp.db.rescued-*")
        assert str(saved) in worker.fault and "move that file" in worker.fault
        assert len(_done_ids_seen_by_a_new_process(saved)) == done  # every commit is in it
        os.rename(saved, db)
        wait_for(
            lambda: worker.progress.status != q.WorkerStatus.PAUSED and worker.stats["done"] == 12,
            what="resumed and drained",
        )
    assert_each_done_once(store, 12)
    assert _done_ids_seen_by_a_new_process(db) == list(range(1, 13))
