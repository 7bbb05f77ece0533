"""The run queue: atomic claims, the worker registry, crash recovery, cancel/requeue/pause.

Torch-free: the TUI and the `mtp` CLI import it. The database is the only channel between the
app and the engines, so every state change here is one write transaction (`Store.write()`,
BEGIN IMMEDIATE on SQLite). Row selections also carry FOR UPDATE SKIP LOCKED, which SQLite
ignores and PostgreSQL needs so that two engines never claim the same run.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, update
from sqlmodel import col, select

from .db import Store, db_now
from .models import Experiment, ExperimentStatus, Meta, Run, RunStatus, Score, Worker, utcnow
from .sweep.methods import is_set_method

PAUSED_KEY = "queue_paused"
RESUMED_KEY = "queue_resumed"  # the database time of the last resume; a braked engine waits for it
# Engine deaths with a run in flight before that run is failed as the likely cause (see Run.crashes).
# Several, because a suspect runs alone and random kills (OOM killer, a restart) seldom hit the
# same lone run that often, while a run that really crashes the engine does so every time.
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_STALE_AFTER_S = 60.0


class WorkerStatus:
    IDLE = "idle"
    RUNNING = "running"
    PAUSED = (
        "paused"  # the engine cannot write (disk full, read-only, database gone); message says why
    )
    STOPPED = "stopped"
    DEAD = "dead"  # stopped heartbeating; set by recover_stale
    LIVE = (IDLE, RUNNING, PAUSED)


# ------------------------------------------------------------------ helpers
def _aware(dt: datetime | None) -> datetime | None:
    # SQLite hands datetimes back naive; they were written in UTC.
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def age_s(ts: datetime | None, now: datetime) -> float | None:
    """Seconds from ``ts`` to ``now``, both the database's clock; never negative (a heartbeat
    written a moment after ``now`` was read is 0 s old, not -0.1 s)."""
    if ts is None:
        return None
    return max(0.0, (now - _aware(ts)).total_seconds())


def database_now(store: Store) -> datetime:
    """The database's clock: what every age shown to a person is measured against."""
    return store.now()


def pid_alive(pid: int) -> bool:
    """Whether a process exists on this host; a zombie (killed, not yet reaped) counts as dead."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _refresh_experiments(session, experiment_ids: Iterable[int]) -> None:
    """An experiment is done when none of its runs is queued or running, else queued."""
    ids = sorted(set(i for i in experiment_ids if i is not None))
    if not ids:
        return
    open_ids = set(
        session.exec(
            select(Run.experiment_id)
            .where(
                col(Run.experiment_id).in_(ids),
                col(Run.status).in_([RunStatus.QUEUED, RunStatus.RUNNING]),
            )
            .distinct()
        )
    )
    now = db_now(session)
    for exp in session.exec(select(Experiment).where(col(Experiment.id).in_(ids))):
        if exp.status in (ExperimentStatus.DRAFT, ExperimentStatus.ARCHIVED):
            continue
        new = ExperimentStatus.QUEUED if exp.id in open_ids else ExperimentStatus.DONE
        if exp.status != new:
            exp.status = new
            exp.updated_at = now
            session.add(exp)


# ------------------------------------------------------------------ pause
def set_paused(store: Store, paused: bool) -> None:
    """Paused: engines finish their current batch and claim nothing new. A resume also wakes
    engines that stopped themselves (every run failing alike): see `resume_token`."""
    store.set_meta(PAUSED_KEY, "1" if paused else "0")
    if not paused:
        store.set_meta(RESUMED_KEY, store.now().isoformat())


def resume_token(store: Store) -> str:
    """Moves on every `mtp queue resume` (or the app's resume)."""
    return store.get_meta(RESUMED_KEY, "")


def is_paused(store: Store) -> bool:
    return store.get_meta(PAUSED_KEY, "0") == "1"


def _paused_in(session) -> bool:
    row = session.get(Meta, PAUSED_KEY)
    return bool(row and row.value == "1")


# ------------------------------------------------------------------ claims
@dataclass(frozen=True)
class ModelKey:
    """What a worker has loaded; switching it is the expensive part of a queue."""

    model: str
    weights_kind: str = "none"
    weights_path: str | None = None

    @classmethod
    def of(cls, run: Run) -> ModelKey:
        return cls(run.model, run.weights_kind or "none", run.weights_path)


def claim_group(
    store: Store,
    worker_id: str,
    max_batch: int = 8,
    loaded: ModelKey | None = None,
) -> list[Run]:
    """Claim up to ``max_batch`` queued runs sharing one group_key, atomically; the runs of a
    set method's set (one group_key) are claimed all together whatever ``max_batch`` says.

    The head run is the best queued run: fewest engine deaths charged (Run.crashes), then same
    model/weights as ``loaded`` (a model switch costs far more than a batch), then higher
    priority, then oldest. Returns [] when the queue
    is empty or paused. Claimed runs are running, owned by ``worker_id``, attempts + 1, and
    not yet in flight (`mark_in_flight` says when generation starts).
    """
    max_batch = max(1, int(max_batch))
    with store.write() as s:
        if _paused_in(s):
            return []
        order = []
        if loaded is not None:
            same = and_(
                Run.model == loaded.model,
                Run.weights_kind == loaded.weights_kind,
                col(Run.weights_path).is_not_distinct_from(loaded.weights_path),
            )
            order.append(case((same, 0), else_=1))
        order += [col(Run.priority).desc(), col(Run.id).asc()]
        queued = select(Run.id, Run.group_key, Run.crashes, Run.solo, Run.method).where(
            Run.status == RunStatus.QUEUED
        )
        # Runs charged with engine deaths go last, the least charged first: a run that kills
        # engines never holds up healthy work, and random kills (which hit whatever runs first
        # after a restart) spread over many runs instead of piling onto one. Two queries, so
        # the common one still walks the queue index instead of sorting the whole queue.
        head = s.exec(
            queued.where(Run.crashes == 0)
            .order_by(*order)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if head is None:
            head = s.exec(
                queued.order_by(col(Run.crashes).asc(), *order)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
        if head is None:
            return []
        if is_set_method(head.method):
            # A set is generated jointly (each image attends to the others), so it is one unit:
            # claimed whole whatever max_batch says, charged runs included, never split.
            ids = list(
                s.exec(
                    select(Run.id)
                    .where(Run.status == RunStatus.QUEUED, Run.group_key == head.group_key)
                    .order_by(col(Run.id).asc())
                    .with_for_update(skip_locked=True)
                )
            )
        elif head.crashes or head.solo:
            # A run that was in flight when an engine died runs alone, so a run that kills
            # engines takes no batchmates down with it and is found out in a few deaths.
            ids = [head.id]
        else:
            ids = list(
                s.exec(
                    select(Run.id)
                    .where(
                        Run.status == RunStatus.QUEUED,
                        Run.group_key == head.group_key,
                        Run.crashes == 0,
                        Run.solo == False,  # noqa: E712 (SQL)
                    )
                    .order_by(col(Run.priority).desc(), col(Run.id).asc())
                    .limit(max_batch)
                    .with_for_update(skip_locked=True)
                )
            )
        now = db_now(s)
        s.execute(
            update(Run)
            .where(col(Run.id).in_(ids), Run.status == RunStatus.QUEUED)
            .values(
                status=RunStatus.RUNNING,
                worker_id=worker_id,
                claimed_at=now,
                started_at=None,
                attempts=Run.attempts + 1,
                cancel_requested=False,
            )
        )
        runs = list(
            s.exec(
                select(Run)
                .where(
                    col(Run.id).in_(ids),
                    Run.worker_id == worker_id,
                    Run.status == RunStatus.RUNNING,
                )
                .order_by(Run.id)
            )
        )
    return runs


def mark_in_flight(store: Store, worker_id: str, run_ids: Sequence[int]) -> None:
    """Generation of these claimed runs starts now: from here an engine death counts against them."""
    if not run_ids:
        return
    with store.write() as s:
        s.execute(
            update(Run)
            .where(
                col(Run.id).in_(list(run_ids)),
                Run.worker_id == worker_id,
                Run.status == RunStatus.RUNNING,
            )
            .values(started_at=db_now(s))
        )


def complete_runs(store: Store, worker_id: str, results: Sequence[dict[str, Any]]) -> list[int]:
    """Commit finished runs in one transaction: artifact paths, scores and status together.

    Each result: run_id, image_path, source_image_path, mask_path, source_mask_path, maps_path,
    duration_s, scores (list of Score column dicts). A run no longer owned by this worker (it was
    recovered and handed to another) is skipped, so no run is ever finished twice. A run whose
    cancel was requested while it ran ends cancelled. Returns the ids committed as done.
    """
    done: list[int] = []
    if not results:
        return done
    by_id = {int(r["run_id"]): r for r in results}
    with store.write() as s:
        now = db_now(s)
        runs = list(
            s.exec(
                select(Run).where(
                    col(Run.id).in_(list(by_id)),
                    Run.worker_id == worker_id,
                    Run.status == RunStatus.RUNNING,
                )
            )
        )
        for run in runs:
            r = by_id[run.id]
            run.finished_at = now
            run.duration_s = r.get("duration_s")
            if run.cancel_requested:
                run.status = RunStatus.CANCELLED
                s.add(run)
                continue
            run.status = RunStatus.DONE
            run.error = None
            # why a done run has no scores (NULL when scored), and what generated it
            run.score_error = r.get("score_error")
            run.session_id = r.get("session_id", run.session_id)
            for name in (
                "image_path",
                "source_image_path",
                "mask_path",
                "source_mask_path",
                "maps_path",
            ):
                setattr(run, name, r.get(name))
            s.add(run)
            # A requeued run may carry scores of an earlier result; only the latest count.
            s.execute(delete(Score).where(Score.run_id == run.id))
            for sc in r.get("scores") or ():
                s.add(
                    Score(
                        run_id=run.id,
                        **{
                            k: sc.get(k)
                            for k in ("metric", "backbone", "value", "preprocess", "scored_text")
                        },
                        # scored by the engine that generated it, in the same session
                        session_id=sc.get("session_id", r.get("session_id")),
                    )
                )
            done.append(run.id)
        _refresh_experiments(s, [r.experiment_id for r in runs])
    return done


def fail_runs(store: Store, worker_id: str | None, run_ids: Sequence[int], error: str) -> list[int]:
    """Mark runs failed with ``error`` (only those still running for ``worker_id``, if given)."""
    if not run_ids:
        return []
    with store.write() as s:
        q = select(Run).where(col(Run.id).in_(list(run_ids)), Run.status == RunStatus.RUNNING)
        if worker_id is not None:
            q = q.where(Run.worker_id == worker_id)
        runs = list(s.exec(q))
        now = db_now(s)
        for run in runs:
            run.status = RunStatus.CANCELLED if run.cancel_requested else RunStatus.FAILED
            run.error = error
            run.finished_at = now
            s.add(run)
        _refresh_experiments(s, [r.experiment_id for r in runs])
    return [r.id for r in runs]


def release_runs(store: Store, worker_id: str, run_ids: Sequence[int]) -> list[int]:
    """Give claimed runs back untouched (engine shutdown): queued again, this attempt not counted."""
    if not run_ids:
        return []
    with store.write() as s:
        runs = list(
            s.exec(
                select(Run).where(
                    col(Run.id).in_(list(run_ids)),
                    Run.worker_id == worker_id,
                    Run.status == RunStatus.RUNNING,
                )
            )
        )
        now = db_now(s)
        for run in runs:
            if run.cancel_requested:
                run.status, run.finished_at = RunStatus.CANCELLED, now
            else:
                run.status = RunStatus.QUEUED
                run.attempts = max(0, run.attempts - 1)
                run.started_at = None
            run.worker_id = None
            run.claimed_at = None
            s.add(run)
        _refresh_experiments(s, [r.experiment_id for r in runs])
    return [r.id for r in runs]


def release_worker_runs(store: Store, worker_id: str) -> list[int]:
    """Give back every run still claimed by ``worker_id`` (release_runs on all of them). For an
    engine resuming after a database fault: a claim whose commit reached the server while the
    connection broke is held by it without its knowing, and would stay running forever."""
    with store.session() as s:
        ids = list(
            s.exec(
                select(Run.id).where(Run.worker_id == worker_id, Run.status == RunStatus.RUNNING)
            )
        )
    return release_runs(store, worker_id, ids)


def unfail_runs(store: Store, worker_id: str, run_ids: Sequence[int]) -> list[int]:
    """Put runs this worker failed back in the queue as if never claimed: the engine, not the
    runs, was at fault (its brake). Only runs still failed by ``worker_id`` move; a run the user
    requeued, cancelled or another engine finished since is left alone."""
    if not run_ids:
        return []
    with store.write() as s:
        runs = list(
            s.exec(
                select(Run).where(
                    col(Run.id).in_(list(run_ids)),
                    Run.worker_id == worker_id,
                    Run.status == RunStatus.FAILED,
                )
            )
        )
        for run in runs:
            run.status = RunStatus.QUEUED
            run.attempts = max(0, run.attempts - 1)
            run.error = None
            run.worker_id = None
            run.claimed_at = run.started_at = run.finished_at = None
            run.duration_s = None
            s.add(run)
        _refresh_experiments(s, [r.experiment_id for r in runs])
    return [r.id for r in runs]


def run_origins(store: Store, run_ids: Sequence[int]) -> dict[int, tuple[int, str]]:
    """Experiment id and model of each run."""
    if not run_ids:
        return {}
    with store.session() as s:
        rows = s.exec(
            select(Run.id, Run.experiment_id, Run.model).where(col(Run.id).in_(list(run_ids)))
        )
        return {rid: (exp, model) for rid, exp, model in rows}


def cancel_requested_ids(store: Store, run_ids: Sequence[int]) -> set[int]:
    """Which of these runs the user asked to cancel (the worker polls this between steps)."""
    if not run_ids:
        return set()
    with store.session() as s:
        return set(
            s.exec(
                select(Run.id).where(col(Run.id).in_(list(run_ids)), Run.cancel_requested == True)  # noqa: E712
            )
        )


# ------------------------------------------------------------------ workers
def make_worker_id(
    device: str, host: str | None = None, pid: int | None = None, tag: str = ""
) -> str:
    wid = f"{host or socket.gethostname()}:{pid or os.getpid()}:{device}"
    return f"{wid}:{tag}" if tag else wid


def register_worker(
    store: Store,
    device: str,
    worker_id: str | None = None,
    host: str | None = None,
    pid: int | None = None,
    slurm_job_id: str | None = None,
    slurm_node: str | None = None,
) -> str:
    host = host or socket.gethostname()
    pid = pid or os.getpid()
    worker_id = worker_id or make_worker_id(device, host, pid)
    with store.write() as s:
        now = db_now(s)
        s.merge(
            Worker(
                id=worker_id,
                host=host,
                pid=pid,
                device=device,
                status=WorkerStatus.IDLE,
                started_at=now,
                heartbeat_at=now,
                message="started",
                slurm_job_id=slurm_job_id,
                slurm_node=slurm_node,
            )
        )
    return worker_id


_UNSET: Any = object()


def heartbeat(
    store: Store,
    worker_id: str,
    status: str | None = None,
    current_run_id: int | None = _UNSET,
    step: int | None = None,
    total_steps: int | None = None,
    its_per_s: float | None = _UNSET,
    message: str | None = None,
) -> None:
    """Refresh a worker's heartbeat and whatever progress fields are given."""
    values: dict[str, Any] = {}
    if status is not None:
        values["status"] = status
    if current_run_id is not _UNSET:
        values["current_run_id"] = current_run_id
    if step is not None:
        values["step"] = step
    if total_steps is not None:
        values["total_steps"] = total_steps
    if its_per_s is not _UNSET:
        values["its_per_s"] = its_per_s
    if message is not None:
        values["message"] = message[:500]
    with store.write() as s:
        # The database's clock: a host whose clock is behind must not look dead to the others.
        values["heartbeat_at"] = db_now(s)
        s.execute(update(Worker).where(Worker.id == worker_id).values(**values))


def has_running_runs(store: Store) -> bool:
    """Whether any engine holds a run (a draining engine waits for them: see WorkerConfig.drain)."""
    with store.session() as s:
        return (
            s.exec(select(Run.id).where(Run.status == RunStatus.RUNNING).limit(1)).first()
            is not None
        )


def list_workers(store: Store, include_stopped: bool = True) -> list[Worker]:
    with store.session() as s:
        # Grouped by host: engines of one machine sit together in the app and `mtp workers`.
        q = select(Worker).order_by(Worker.host, Worker.device, Worker.id)
        if not include_stopped:
            q = q.where(col(Worker.status).in_(list(WorkerStatus.LIVE)))
        return list(s.exec(q))


def worker_is_stale(
    worker: Worker | None,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    now: datetime | None = None,
    host: str | None = None,
) -> bool:
    """Whether ``worker`` is dead; ``now`` is the database's clock (db_now, Store.now), the one
    its heartbeat was written with. Without it the database is not asked and only a stopped
    or missing worker counts as stale."""
    if worker is None or worker.status in (WorkerStatus.STOPPED, WorkerStatus.DEAD):
        return True
    if now is not None and now - _aware(worker.heartbeat_at) > timedelta(seconds=stale_after_s):
        return True
    return worker.host == (host or socket.gethostname()) and not pid_alive(worker.pid)


# (database, worker id) -> (its heartbeat value, when this process first saw that value).
_OBSERVED: dict[tuple[str, str], tuple[Any, float]] = {}


def _silent_for(store: Store, worker: Worker) -> float:
    """Seconds of this process's monotonic clock since it first saw ``worker``'s current
    heartbeat value (0 at first sight): a measure of silence no wall clock can skew."""
    key, t = (store.url, worker.id), time.monotonic()
    seen = _OBSERVED.get(key)
    if seen is None or seen[0] != worker.heartbeat_at:
        if len(_OBSERVED) > 10_000:
            _OBSERVED.clear()
        _OBSERVED[key] = (worker.heartbeat_at, t)
        return 0.0
    return t - seen[1]


def _is_dead(
    store: Store, worker: Worker | None, stale_after_s: float, now: datetime, host: str
) -> bool:
    """worker_is_stale, except for a worker alive on this host whose heartbeat only looks old:
    there the database's clock is this host's, which a clock shifted for one process (as
    libfaketime does) skews too, so its own heartbeats decide: dead once this process has seen
    the same one for ``stale_after_s`` (a hung engine is still found, one recovery check later)."""
    live_here = (
        worker is not None
        and worker.status in WorkerStatus.LIVE
        and worker.host == host
        and pid_alive(worker.pid)
    )
    if live_here:
        silent = _silent_for(store, worker)
        return worker_is_stale(worker, stale_after_s, now, host) and silent > stale_after_s
    return worker_is_stale(worker, stale_after_s, now, host)


@dataclass
class Recovery:
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    dead_workers: list[str] = field(default_factory=list)


def recover_stale(
    store: Store,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    forget_after_s: float = 7 * 86400,
) -> Recovery:
    """Requeue runs held by dead workers; a run in flight in ``max_attempts`` deaths is failed.

    A worker is dead when its heartbeat is older than ``stale_after_s`` by the database's clock
    (for a worker alive on this host: and this process saw no new heartbeat from it for that
    long, see _is_dead), or it runs on this host and its pid is gone, or it said it stopped. Only a death while the run was being generated
    (`mark_in_flight`) counts against it (Run.crashes), so an engine killed while loading its
    model or restarted by hand never burns runs, while a run that kills every engine that
    generates it (it is retried alone) ends failed with a message saying so instead of looping.
    Stopped or dead workers silent for ``forget_after_s`` leave the registry.
    """
    out = Recovery()
    host = socket.gethostname()
    with store.write() as s:
        # Heartbeats were written with the database's clock, so they are judged by it too.
        now = db_now(s)
        running = list(
            s.exec(
                select(Run).where(Run.status == RunStatus.RUNNING).with_for_update(skip_locked=True)
            )
        )
        workers = {w.id: w for w in s.exec(select(Worker))}
        stale = {
            wid
            for wid in {r.worker_id for r in running}
            if _is_dead(store, workers.get(wid), stale_after_s, now, host)
        }
        # Workers that died with nothing claimed are marked too, so the registry tells the truth.
        for w in workers.values():
            if (
                w.id not in stale
                and w.status in WorkerStatus.LIVE
                and _is_dead(store, w, stale_after_s, now, host)
            ):
                stale.add(w.id)
        touched = []
        # A death is charged to a run only when it was the one in flight (a set, generated as
        # one, counts as one): with batch-mates nobody knows which run killed the engine, so
        # none is charged and each is retried alone, where the one that kills is found.
        flying: dict[str | None, int] = {}
        for run in running:
            if run.worker_id in stale and run.started_at is not None:
                flying[run.worker_id] = flying.get(run.worker_id, 0) + 1
        for run in running:
            if run.worker_id not in stale:
                continue
            touched.append(run.experiment_id)
            in_flight = run.started_at is not None
            shared = (
                in_flight and flying.get(run.worker_id, 0) > 1 and not is_set_method(run.method)
            )
            if shared:
                run.solo = True
            elif in_flight:
                run.crashes += 1
            if shared:
                why = (
                    f"worker {run.worker_id} stopped responding while generating it with "
                    f"{flying[run.worker_id] - 1} other run(s) (not counted: retried alone)"
                )
            elif in_flight:
                why = (
                    f"worker {run.worker_id} stopped responding while generating it "
                    f"(engine death {run.crashes} with this run in flight)"
                )
            else:
                why = (
                    f"worker {run.worker_id} stopped responding before generating it (not counted)"
                )
            if run.cancel_requested:
                run.status, run.finished_at, run.error = RunStatus.CANCELLED, now, why
                out.failed.append(run.id)
            elif in_flight and not shared and run.crashes >= max_attempts:
                run.status = RunStatus.FAILED
                run.error = (
                    f"{run.crashes} engines died in a row while generating this run (the last "
                    f"ones with it alone), so it likely crashes the engine; last: {why}"
                )
                run.finished_at = now
                out.failed.append(run.id)
            else:
                run.status = RunStatus.QUEUED
                run.error = why
                out.requeued.append(run.id)
            run.worker_id = None
            run.claimed_at = None
            run.started_at = None
            s.add(run)
        for wid in stale:
            w = workers.get(wid)
            if w is not None and w.status in WorkerStatus.LIVE:
                w.status = WorkerStatus.DEAD
                w.current_run_id = None
                s.add(w)
                out.dead_workers.append(wid)
        s.execute(
            delete(Worker).where(
                col(Worker.status).in_([WorkerStatus.STOPPED, WorkerStatus.DEAD]),
                Worker.heartbeat_at < now - timedelta(seconds=forget_after_s),
            )
        )
        _refresh_experiments(s, touched)
    return out


# ------------------------------------------------------------------ user actions
def cancel_runs(store: Store, run_ids: Sequence[int]) -> dict[str, int]:
    """Queued runs are cancelled at once; running ones are flagged and stopped between steps."""
    ids = list(run_ids)
    if not ids:
        return {"cancelled": 0, "requested": 0}
    with store.write() as s:
        now = db_now(s)
        res = s.execute(
            update(Run)
            .where(col(Run.id).in_(ids), Run.status == RunStatus.QUEUED)
            .values(status=RunStatus.CANCELLED, finished_at=now)
        )
        req = s.execute(
            update(Run)
            .where(col(Run.id).in_(ids), Run.status == RunStatus.RUNNING)
            .values(cancel_requested=True)
        )
        exp_ids = set(s.exec(select(Run.experiment_id).where(col(Run.id).in_(ids)).distinct()))
        _refresh_experiments(s, exp_ids)
    return {"cancelled": res.rowcount, "requested": req.rowcount}


def cancel_experiment(store: Store, experiment_id: int) -> dict[str, int]:
    with store.write() as s:
        now = db_now(s)
        res = s.execute(
            update(Run)
            .where(Run.experiment_id == experiment_id, Run.status == RunStatus.QUEUED)
            .values(status=RunStatus.CANCELLED, finished_at=now)
        )
        req = s.execute(
            update(Run)
            .where(Run.experiment_id == experiment_id, Run.status == RunStatus.RUNNING)
            .values(cancel_requested=True)
        )
        _refresh_experiments(s, [experiment_id])
    return {"cancelled": res.rowcount, "requested": req.rowcount}


_RESET = dict(
    status=RunStatus.QUEUED,
    attempts=0,
    crashes=0,
    solo=False,
    error=None,
    score_error=None,
    session_id=None,
    worker_id=None,
    cancel_requested=False,
    claimed_at=None,
    started_at=None,
    finished_at=None,
    duration_s=None,
    image_path=None,
    source_image_path=None,
    mask_path=None,
    source_mask_path=None,
    maps_path=None,
)


def _requeue_where(store: Store, where) -> int:
    with store.write() as s:
        ids = list(s.exec(select(Run.id).where(where)))
        if not ids:
            return 0
        s.execute(delete(Score).where(col(Score.run_id).in_(ids)))
        s.execute(update(Run).where(col(Run.id).in_(ids)).values(**_RESET))
        exp_ids = set(s.exec(select(Run.experiment_id).where(col(Run.id).in_(ids)).distinct()))
        _refresh_experiments(s, exp_ids)
    return len(ids)


def requeue(
    store: Store,
    experiment_id: int,
    statuses: Sequence[str] = (RunStatus.FAILED, RunStatus.CANCELLED),
) -> int:
    """Put an experiment's runs with these statuses back in the queue (fresh attempts, no scores)."""
    allowed = [st for st in statuses if st in RunStatus.FINISHED]
    if not allowed:
        return 0
    return _requeue_where(
        store, and_(Run.experiment_id == experiment_id, col(Run.status).in_(allowed))
    )


def requeue_runs(store: Store, run_ids: Sequence[int]) -> int:
    """Requeue these runs if they are finished (done, failed or cancelled)."""
    if not run_ids:
        return 0
    return _requeue_where(
        store, and_(col(Run.id).in_(list(run_ids)), col(Run.status).in_(list(RunStatus.FINISHED)))
    )


def set_priority(store: Store, experiment_id: int, priority: int) -> int:
    """Change an experiment's priority; its queued runs move in the queue at once."""
    with store.write() as s:
        exp = s.get(Experiment, experiment_id)
        if exp is None:
            return 0
        exp.priority = int(priority)
        exp.updated_at = utcnow()
        s.add(exp)
        res = s.execute(
            update(Run)
            .where(Run.experiment_id == experiment_id, Run.status == RunStatus.QUEUED)
            .values(priority=int(priority))
        )
    return res.rowcount


# ------------------------------------------------------------------ summaries
@dataclass
class QueueStatus:
    paused: bool
    counts: dict[str, int]
    workers: list[Worker]

    @property
    def queued(self) -> int:
        return self.counts.get(RunStatus.QUEUED, 0)

    @property
    def running(self) -> int:
        return self.counts.get(RunStatus.RUNNING, 0)


def queue_status(store: Store) -> QueueStatus:
    from sqlalchemy import func

    with store.session() as s:
        counts = {st: n for st, n in s.exec(select(Run.status, func.count()).group_by(Run.status))}
        paused = _paused_in(s)
    return QueueStatus(paused=paused, counts=counts, workers=list_workers(store))
