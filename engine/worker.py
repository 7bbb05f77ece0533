"""The engine loop: claim a group -> load/reuse the model -> generate -> write -> score -> commit.

One Worker per device. The database is the queue; a claim is a group of runs sharing one
source (equal group_key), generated as one batch of source + N targets. A run becomes done only
in the single transaction that also stores its artifact paths and scores, so a crash at any
point leaves it running-but-dead, which `store.queue.recover_stale` puts back in the queue.

Failure attribution: anything raised while runs are claimed is those runs' failure (per run:
a failing batch is retried one run at a time, and scoring fails per concept), except faults of
the machine (`engine.faults`: full disk, read-only folder, unusable database), on which the
worker gives its runs back, pauses and retries until the fault clears.

The generator is a backend object (`engine.backends`: diffusers, or the torch-free fake) and
scoring a plain callable, so the loop is testable without torch or weights.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store.db import Store
from store.images import image_problem
from store.models import Concept, Run
from store.queue import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_STALE_AFTER_S,
    ModelKey,
    WorkerStatus,
    cancel_requested_ids,
    claim_group,
    complete_runs,
    fail_runs,
    has_running_runs,
    heartbeat,
    is_paused,
    make_worker_id,
    mark_in_flight,
    recover_stale,
    register_worker,
    release_runs,
    release_worker_runs,
    resume_token,
    run_origins,
    unfail_runs,
)
from store.sweep.methods import SET_METHODS, decode_params
from store.sweep.spec import CONTROL_COLUMNS

from . import artifacts
from .artifacts import write_run_artifacts
from .backends.base import Backend, LoadKey, ModelUnavailable, RunError, SourceJob, TargetJob
from .control import ControlError, ControlSpec
from .errors import EngineError
from .faults import (
    Ballast,
    DatabaseFileWatch,
    EngineFault,
    EngineSick,
    FaultKind,
    LogLimiter,
    artifact_write_fault,
    error_signature,
    probe,
    shown_error,
    systemic_fault,
    systemic_reason,
)
from .scoring import ScorerUnavailable
from .scoring import scored_text as default_scored_text  # torch-free at import

if TYPE_CHECKING:
    from .rescore import Rescorer

log = logging.getLogger("mtp.engine")

# score(images, texts, source, refs) -> per image a list of Score column dicts
ScoreFn = Callable[[list, list[str], Any, list[Path]], list[list[dict]]]


# ------------------------------------------------------------------ errors
class Cancelled(EngineError):
    """Every run of the batch was cancelled by the user."""


class Interrupted(EngineError):
    """The engine was asked to stop; claims go back to the queue."""


def is_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    return type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


# ------------------------------------------------------------------ progress
@dataclass
class Progress:
    """What the heartbeat thread reports; written by the loop, read by the thread."""

    status: str = WorkerStatus.IDLE
    run_id: int | None = None
    step: int = 0
    total: int = 0
    its_per_s: float | None = None
    message: str = ""
    _t_last: float = field(default=0.0, repr=False)

    def start(self, run_id: int, total: int, message: str) -> None:
        self.status, self.run_id, self.step, self.total, self.message = (
            WorkerStatus.RUNNING,
            run_id,
            0,
            total,
            message,
        )
        self._t_last = time.monotonic()

    def tick(self, i: int, n: int) -> None:
        now = time.monotonic()
        dt = now - self._t_last
        self._t_last = now
        if dt > 0:
            rate = 1.0 / dt
            self.its_per_s = rate if self.its_per_s is None else 0.7 * self.its_per_s + 0.3 * rate
        self.step, self.total = i + 1, n

    def idle(self, message: str = "") -> None:
        self.status, self.run_id, self.step, self.total, self.message = (
            WorkerStatus.IDLE,
            None,
            0,
            0,
            message,
        )
        self.its_per_s = None

    def pause(self, reason: str) -> None:
        self.idle(reason)
        self.status = WorkerStatus.PAUSED


# ------------------------------------------------------------------ the worker
@dataclass
class WorkerConfig:
    device: str = "cpu"
    max_batch: int = 8
    poll_s: float = 2.0
    once: bool = False
    # With once: before exiting on an empty queue, wait while other engines hold runs, so runs of
    # one that dies or is cancelled (given back, or requeued once it is stale) are not left behind.
    drain: bool = False
    # The SLURM job and node this engine runs in (engine.slurm.current_job), recorded on its Worker row.
    slurm_job_id: str | None = None
    slurm_node: str | None = None
    heartbeat_s: float = 5.0
    stale_after_s: float = DEFAULT_STALE_AFTER_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    recover_every_s: float = 30.0
    cancel_check_s: float = 0.5
    max_backoff_s: float = 60.0  # longest wait between probes while paused by a fault
    # ... and while paused by a database fault: a database back from an outage or a restart
    # must be seen within seconds, and a probe of it costs one small write.
    db_backoff_s: float = 2.0
    # The brake: this many runs in a row failing with the same error signature, across at least
    # two experiments or models, stop the engine (0: never).
    brake_after: int = 5
    ballast_bytes: int = (
        1 << 20
    )  # disk space held back to record a pause on a full disk (engine.faults.Ballast)


class Worker:
    def __init__(
        self,
        store: Store,
        backend: Backend,
        config: WorkerConfig | None = None,
        score: ScoreFn | None = None,
        worker_id: str | None = None,
        scored_text: Callable[[str, str, str], str] | None = None,
    ):
        self.store = store
        self.home = store.home
        self.backend = backend
        self.config = config or WorkerConfig()
        self.score = score
        self.scored_text = scored_text or default_scored_text
        # set by engine.cli when scoring is on
        self.rescorer: Rescorer | None = None
        self.scorers: dict[str, str] = {}  # family -> backbone, recorded in the engine session
        self._session: tuple[LoadKey, int] | None = None
        self.worker_id = worker_id or make_worker_id(self.config.device)
        self.stop_event = threading.Event()
        self.progress = Progress()
        self.loaded: LoadKey | None = None
        self.claimed: list[int] = []
        self.stats = {
            "groups": 0,
            "generate_calls": 0,
            "done": 0,
            "failed": 0,
            "cancelled": 0,
            "pauses": 0,
        }
        # Why the engine could not go on (a fault under --once, or a lasting loop error); None when fine.
        self.fault: str | None = None
        self._limited = LogLimiter(log, every_s=60.0)
        self._ballast = Ballast(self.home.root, self.config.ballast_bytes)
        self._fault_delay = 0.0
        self._hb_fault: str | None = (
            None  # set by the heartbeat thread when the database refuses writes
        )
        self._resumed_at: float | None = None
        self._db_watch = DatabaseFileWatch(store)
        # Held by the heartbeat's write and by the rescue of a deleted -wal: a heartbeat written
        # into the old log while it is checkpointed, or through a connection opened on a new log
        # beside it, leaves mtp.db damaged.
        self._db_lock = threading.Lock()
        # The current streak of runs failed alike: (signature, experiment id, model, run id, error).
        self._streak: list[tuple[str, int, str, int, str]] = []
        self._done_at_resume = 0
        self._hb_thread: threading.Thread | None = None
        self._hb_stop = threading.Event()
        self._last_recover = 0.0
        self._refs_cache: dict[tuple, list[Path]] = {}
        # Batch size that fit after an OOM, per (model, size), so later groups start there.
        self._batch_fit: dict[tuple, int] = {}

    # ---------------------------------------------------------- lifecycle
    def stop(self) -> None:
        """Ask the loop to stop; the current batch aborts at its next step and is released."""
        self.stop_event.set()

    def run(self) -> dict:
        """Serve the queue until stopped (or, with ``once``, drained). ``self.fault`` says why
        a --once engine gave up early."""
        self._start_heartbeat()
        log.info("worker %s started (max batch %d)", self.worker_id, self.config.max_batch)
        registered = False
        errors = 0
        try:
            while not self.stop_event.is_set():
                try:
                    if not registered:
                        register_worker(
                            self.store,
                            self.config.device,
                            self.worker_id,
                            slurm_job_id=self.config.slurm_job_id,
                            slurm_node=self.config.slurm_node,
                        )
                        registered = True
                        self._ballast.sweep()
                        self._ballast.fill()
                        self._recover()
                    if not self._step():
                        break
                    errors = 0
                except Interrupted:
                    break
                except Exception as exc:
                    fault = systemic_fault(exc)
                    if fault is not None:
                        if not isinstance(exc, EngineFault):
                            # The words are in the reason; the driver's text only here.
                            self._limited(logging.ERROR, "database error: %r", exc)
                        if not self._pause(fault):
                            break
                        continue
                    # Not the machine and not a run (runs claimed are failed in _step): a bug or
                    # a passing hiccup. Back off, and log it rarely so it cannot fill the disk.
                    errors += 1
                    self._limited(logging.ERROR, "engine loop error:\n%s", traceback.format_exc())
                    if self.config.once and errors >= 3:
                        self.fault = f"engine loop error: {shown_error(exc)}"
                        break
                    self.stop_event.wait(
                        min(self.config.poll_s * 2 ** min(errors, 10), self.config.max_backoff_s)
                    )
        finally:
            self._stop_heartbeat()
            try:
                self._release_claimed()
                heartbeat(
                    self.store,
                    self.worker_id,
                    status=WorkerStatus.STOPPED,
                    current_run_id=None,
                    step=0,
                    total_steps=0,
                    its_per_s=None,
                    message=f"stopped: {self.fault}" if self.fault else "stopped",
                )
            except (
                Exception
            ) as exc:  # the database may be what failed; its runs are recovered later
                log.error(
                    "could not record the stop (claimed runs %s are recovered once this worker "
                    "is seen dead): %s",
                    self.claimed,
                    exc,
                )
            self._ballast.free()
            log.info("worker %s stopped: %s", self.worker_id, self.stats)
        return self.stats

    def _release_claimed(self) -> None:
        if self.claimed:
            release_runs(self.store, self.worker_id, self.claimed)
            self.claimed = []

    def _pause(self, fault: EngineFault) -> bool:
        """Hold off a fault of the machine: runs back to the queue, probe with backoff until it
        clears. False when the loop should end (--once, or asked to stop)."""
        if isinstance(fault, EngineSick):
            return self._brake(fault)
        reason = fault.reason
        self.stats["pauses"] += 1
        saved = self._db_watch.rescue_deleted(self.store)
        if saved:
            reason = self._db_watch.problem() or reason
        if self._db_watch.wal_lost:
            # First of all: the commits only this engine still sees go into mtp.db.
            with self._db_lock:
                problem = self._db_watch.rescue_wal(self.store)
            if problem:
                log.error("engine commits in the deleted -wal not saved yet: %s", problem)
        self.fault = reason
        self.progress.pause(reason)
        # Limited: a fault that the probe misses (a database full only for bigger writes) comes
        # back after each resume, and must not write a line per cycle forever.
        self._limited(
            logging.ERROR,
            "engine paused: %s; its runs stay queued and it retries until this clears",
            reason,
        )
        space = fault.kind == FaultKind.SPACE
        if space and self._ballast.free():
            log.info("freed the engine's reserved disk space to record the pause")
        try:
            self._release_claimed()
            # Now, not at the next heartbeat: on a full disk this write may be the only one that fits.
            heartbeat(
                self.store,
                self.worker_id,
                status=WorkerStatus.PAUSED,
                current_run_id=None,
                step=0,
                total_steps=0,
                its_per_s=None,
                message=reason,
            )
        except Exception as exc:  # released on resume, when the database takes writes again
            log.warning(
                "claimed runs %s will be released once the database takes writes: %s",
                self.claimed,
                exc,
            )
        if self.config.once:
            return False
        t0 = time.monotonic()
        # The backoff carries over when a fault returns soon after a resume without any run done.
        recent = self._resumed_at is not None and self.stats["done"] == self._done_at_resume
        delay = self._fault_delay if recent else max(0.05, self.config.poll_s)
        while True:
            # A database back from an outage is seen within db_backoff_s; a full disk or a
            # read-only folder is probed less often (each probe writes 64 KiB there).
            cap = (
                min(self.config.db_backoff_s, self.config.max_backoff_s)
                if fault.kind in (FaultKind.DATABASE, FaultKind.DATABASE_FILE)
                else self.config.max_backoff_s
            )
            delay = min(delay, cap)
            if self.stop_event.wait(delay):
                return False
            with self._db_lock:
                problem = probe(
                    self.store,
                    self.home,
                    self._ballast if space else None,
                    watch=self._db_watch,
                    who=self.worker_id,
                )
            if problem is None and space and not self._ballast.fill():
                problem = f"the disk of {self.home.root} is still (nearly) full"
            if problem is None:
                try:
                    self._release_claimed()
                    # Claims it does not know it holds (a commit in doubt when the fault hit).
                    stray = release_worker_runs(self.store, self.worker_id)
                    if stray:
                        log.warning("gave back runs %s claimed as the fault hit", stray)
                except Exception as exc:
                    problem = systemic_reason(exc) or shown_error(exc)
            if problem is None:
                break
            if problem != self.fault:
                self._limited(logging.ERROR, "engine still paused: %s", problem)
                self.fault = problem
                self.progress.pause(problem)
            delay = min(delay * 2, self.config.max_backoff_s)
        self._fault_delay = min(delay * 2, self.config.max_backoff_s)
        self._resumed_at, self._done_at_resume = time.monotonic(), self.stats["done"]
        self._limited(logging.WARNING, "fault cleared (%s): resuming", reason)
        log.debug("resumed after %.1fs paused", time.monotonic() - t0)
        self.fault = None
        self._hb_fault = None  # the probe just wrote; a stale heartbeat failure must not re-pause
        self._resumed()
        return True

    def _resumed(self) -> None:
        """Clear the pause where people look (the Worker row) now, not at the next heartbeat."""
        self.progress.idle("resumed")
        try:
            heartbeat(
                self.store,
                self.worker_id,
                status=WorkerStatus.IDLE,
                current_run_id=None,
                step=0,
                total_steps=0,
                its_per_s=None,
                message="resumed",
            )
        except Exception as exc:  # the heartbeat thread writes it shortly
            log.warning("could not record the resume yet: %s", exc)

    def _brake(self, sick: EngineSick) -> bool:
        """Stop taking runs until `mtp queue resume` or a restart: the engine fails everything
        alike, so every run it took would be failed for nothing. The runs it failed in the
        streak and those it holds go back to the queue uncharged (attempts as before the claim,
        no crash counted): the engine was sick, not they."""
        self.stats["pauses"] += 1
        self.stats["brakes"] = self.stats.get("brakes", 0) + 1
        reason = sick.reason
        self.fault = reason
        self.progress.pause(reason)
        self._streak.clear()
        log.error("%s", reason)
        token = None
        while True:
            try:
                token = resume_token(self.store)
                back = unfail_runs(self.store, self.worker_id, sick.run_ids)
                self.stats["failed"] -= len(back)
                self._release_claimed()
                release_worker_runs(self.store, self.worker_id)
                heartbeat(
                    self.store,
                    self.worker_id,
                    status=WorkerStatus.PAUSED,
                    current_run_id=None,
                    step=0,
                    total_steps=0,
                    its_per_s=None,
                    message=reason,
                )
                log.warning("runs %s given back to the queue uncharged", back)
                break
            except Exception as exc:  # the database is down too: try again shortly
                self._limited(logging.ERROR, "could not give the runs back yet: %r", exc)
                if self.config.once or self.stop_event.wait(self.config.db_backoff_s):
                    return False
        if self.config.once:
            return False
        while not self.stop_event.wait(max(0.05, min(self.config.poll_s, 2.0))):
            try:
                if resume_token(self.store) != token:
                    break
            except Exception as exc:  # noqa: BLE001 - keep waiting; the log says why
                self._limited(logging.WARNING, "waiting for a resume: %r", exc)
        else:
            return False
        log.warning("resumed by `mtp queue resume` after: %s", reason)
        self.fault = None
        self._resumed()
        return True

    def _check_database(self) -> None:
        if self._hb_fault:  # the heartbeat thread could not write
            raise EngineFault(self._hb_fault, FaultKind.DATABASE)
        problem = self._db_watch.problem()
        if problem:
            raise EngineFault(problem, FaultKind.DATABASE_FILE)

    def _step(self) -> bool:
        """Claim and run one group; False when the loop should end (--once and nothing left)."""
        self._check_database()
        if time.monotonic() - self._last_recover > self.config.recover_every_s:
            self._recover()
        runs = claim_group(self.store, self.worker_id, self.config.max_batch, self._model_key())
        if not runs and self.rescorer is not None and self.rescorer.run_one():
            return True  # scoring existing images (`mtp score`) only when nothing waits to be generated
        if not runs:
            # Before --once gives up, runs held by a dead worker may come back.
            if self.config.once:
                if self._recover().requeued:
                    return True
                if self.config.drain and has_running_runs(self.store):
                    self.progress.idle("draining: waiting on runs other engines hold")
                    self.stop_event.wait(self.config.poll_s)
                    return True
                return False
            self.progress.idle("queue paused" if is_paused(self.store) else "waiting for runs")
            self.stop_event.wait(self.config.poll_s)
            return True
        self.claimed = [r.id for r in runs]
        try:
            self.process_group(runs)
        except Interrupted:
            raise  # run() gives the claims back
        except Exception as exc:
            if systemic_reason(exc) is not None:
                raise
            # Whatever raised while these runs were claimed is theirs, wherever it was raised:
            # giving the claim back would hand the same poison to every engine forever.
            if self.claimed:
                log.error("runs %s failed:\n%s", self.claimed, traceback.format_exc())
                self._fail(list(self.claimed), shown_error(exc), exc)
        self._release_claimed()
        self.progress.idle()
        return True

    def _model_key(self) -> ModelKey | None:
        if self.loaded is None:
            return None
        return ModelKey(self.loaded.model, self.loaded.weights_kind, self.loaded.weights_path)

    def _recover(self):
        self._last_recover = time.monotonic()
        rec = recover_stale(self.store, self.config.stale_after_s, self.config.max_attempts)
        if rec.requeued or rec.failed:
            log.warning(
                "recovered runs of dead workers %s: requeued %s, failed %s",
                rec.dead_workers,
                rec.requeued,
                rec.failed,
            )
        return rec

    # ---------------------------------------------------------- heartbeat
    def _start_heartbeat(self) -> None:
        self._hb_stop.clear()
        self._hb_thread = threading.Thread(
            target=self._heartbeat_loop, name="mtp-heartbeat", daemon=True
        )
        self._hb_thread.start()

    def _stop_heartbeat(self) -> None:
        self._hb_stop.set()
        if self._hb_thread is not None:
            self._hb_thread.join(timeout=10)

    def _heartbeat_loop(self) -> None:
        # A separate thread, so one long denoising step or model load never looks like death.
        while not self._hb_stop.is_set():
            p = self.progress
            try:
                # The file under the open connection (SQLite): deleted, replaced or unreadable
                # raises nothing there, so look.
                problem = self._db_watch.problem()
            except Exception as exc:  # noqa: BLE001 - a check that fails must not stop the beat
                problem = None
                self._limited(logging.WARNING, "database file check failed: %r", exc)
            try:
                with self._db_lock:
                    # With its -wal deleted, nothing but the rescue may write (see _db_lock).
                    if not self._db_watch.wal_lost:
                        heartbeat(
                            self.store,
                            self.worker_id,
                            status=p.status,
                            current_run_id=p.run_id,
                            step=p.step,
                            total_steps=p.total,
                            its_per_s=p.its_per_s,
                            message=p.message,
                        )
            except Exception as exc:  # a busy or full database must not kill the thread
                self._limited(logging.WARNING, "heartbeat failed: %s", exc)
                # The loop pauses on it: an idle engine would otherwise never notice a full disk.
                self._hb_fault = problem or systemic_reason(exc)
            else:
                self._hb_fault = problem
            self._hb_stop.wait(self.config.heartbeat_s)

    # ---------------------------------------------------------- one group
    def process_group(self, runs: list[Run]) -> None:
        self.stats["groups"] += 1
        first = runs[0]
        ids = [r.id for r in runs]
        log.info(
            "claimed %d run(s) %s of experiment %s (model %s, seed %s, %d steps)",
            len(runs),
            ids,
            first.experiment_id,
            first.model,
            first.seed,
            first.num_steps,
        )
        self.progress.start(first.id, first.num_steps, f"loading {first.model}")
        try:
            key = LoadKey.of(first)
            self.backend.load(key)
            self.loaded = key
        except ModelUnavailable as exc:
            self.loaded = None
            self._fail(ids, str(exc))
            return
        except Exception as exc:
            self.loaded = None
            if systemic_reason(exc) is not None:
                raise
            log.error("loading %s failed:\n%s", first.model, traceback.format_exc())
            self._fail(ids, f"cannot load model {first.model}: {type(exc).__name__}: {exc}")
            return
        prepare = getattr(self.score, "prepare", None)
        if prepare is not None:
            # The scorer's models load now, before the runs count as in flight.
            try:
                prepare()
            except RunError as exc:
                self._fail(ids, str(exc))
                return
        # From here an engine death is charged to these runs (store.queue.recover_stale).
        mark_in_flight(self.store, self.worker_id, ids)

        source = SourceJob.of(first, self.home.root)
        if first.source_image:
            problem = image_problem(source.image)
            if problem:
                self._fail(ids, f"source image {problem}")
                return

        # Runs from before the method column read as MasaCtrl.
        method = getattr(first, "method", None) or "masactrl"
        if method in SET_METHODS:
            self._process_set(source, runs, method)
            return

        targets: list[TargetJob] = []
        by_id = {r.id: r for r in runs}
        for run in runs:
            try:
                targets.append(
                    TargetJob(
                        run.id,
                        run.target_prompt,
                        self._control_for(run),
                        method=run.method or "masactrl",
                        prompt_index=run.prompt_index,
                    )
                )
            except ControlError as exc:
                self._fail([run.id], f"invalid control: {exc}")
            except RunError as exc:
                self._fail([run.id], str(exc))

        fit_key = (key, source.width, source.height, source.invert)
        batch = max(1, min(len(targets), self._batch_fit.get(fit_key, len(targets))))
        pending = list(targets)
        solo = 0  # leading pending targets to run one at a time (their batch failed)
        while pending:
            if self.stop_event.is_set():
                raise Interrupted()
            chunk = pending[: 1 if solo else batch]
            try:
                self._run_chunk(source, chunk, by_id)
                pending = pending[len(chunk) :]
                solo = max(0, solo - len(chunk))
            except Interrupted:
                raise
            except Cancelled:
                self._cancelled([t.run_id for t in chunk])
                pending = pending[len(chunk) :]
                solo = max(0, solo - len(chunk))
            except Exception as exc:
                if systemic_reason(exc) is not None:
                    raise
                if len(chunk) > 1 and not is_oom(exc):
                    # One bad target must not fail its batchmates: find it by running them alone.
                    log.warning(
                        "batch of runs %s failed (%s: %s); retrying them one at a time",
                        [t.run_id for t in chunk],
                        type(exc).__name__,
                        exc,
                    )
                    solo = len(chunk)
                    continue
                solo = max(0, solo - len(chunk))
                if isinstance(exc, RunError):
                    self._fail([t.run_id for t in chunk], str(exc))
                    pending = pending[len(chunk) :]
                    continue
                if is_oom(exc):
                    self.backend.after_oom()
                    if len(chunk) > 1:
                        batch = max(1, len(chunk) // 2)
                        self._batch_fit[fit_key] = batch
                        log.warning(
                            "out of memory with %d targets; retrying with %d", len(chunk), batch
                        )
                        continue
                    self._fail(
                        [chunk[0].run_id],
                        f"out of memory even with a batch of 1 target at {source.width}x{source.height} "
                        f"on {self.config.device}: {exc}",
                        exc,
                    )
                    pending = pending[1:]
                    continue
                log.error("runs %s failed:\n%s", [t.run_id for t in chunk], traceback.format_exc())
                self._fail([t.run_id for t in chunk], shown_error(exc), exc)
                pending = pending[len(chunk) :]

    def _process_set(self, source: SourceJob, runs: list[Run], method: str) -> None:
        """A group of a set method is one set: generated whole, never split (an OOM fails the
        set with a message instead of halving it)."""
        ids = [r.id for r in runs]
        try:
            targets = sorted(
                (self._set_target(run, method) for run in runs), key=lambda t: t.prompt_index
            )
        except (ControlError, RunError, ValueError) as exc:
            self._fail(ids, f"invalid {method} set: {exc}")
            return
        by_id = {r.id: r for r in runs}
        try:
            self._run_chunk(source, targets, by_id, as_set=True)
        except (Interrupted, Cancelled) as exc:
            if isinstance(exc, Interrupted):
                raise
            self._cancelled(ids)
        except Exception as exc:
            if systemic_reason(exc) is not None:
                raise
            if isinstance(exc, RunError):
                self._fail(ids, str(exc))
            elif is_oom(exc):
                self.backend.after_oom()
                self._fail(
                    ids,
                    f"out of memory generating a {method} set of {len(ids)} images at "
                    f"{source.width}x{source.height} on {self.config.device}; a set is generated "
                    f"whole, never split: use fewer prompts or a smaller size ({exc})",
                )
            else:
                log.error("set %s failed:\n%s", ids, traceback.format_exc())
                self._fail(ids, f"{type(exc).__name__}: {exc}")

    def _set_target(self, run: Run, method: str) -> TargetJob:
        params = decode_params(method, getattr(run, "method_params", "") or "")
        control = None
        # Neutral control columns mean the authors' choice (up-block layers, steps 1..end).
        if not run.is_baseline and (
            run.layers
            or run.start_step
            or run.final_step is not None
            or (run.skip_interval or 1) > 1
        ):
            control = ControlSpec.from_fields(
                layers=run.layers or "decoder",
                start_step=run.start_step or 0,
                final_step=run.final_step,
                skip_interval=run.skip_interval,
            )
            blocks = self.backend.blocks()
            if blocks:
                control.validate(run.num_steps, blocks)
        return TargetJob(
            run.id,
            run.target_prompt,
            control,
            method=method,
            method_params=params,
            prompt_index=int(run.prompt_index or 0),
            subject_words=tuple((run.mask_words or "").split()),
            is_baseline=bool(run.is_baseline),
        )

    def _control_for(self, run: Run) -> ControlSpec | None:
        if run.is_baseline:
            return None
        spec = ControlSpec.from_fields(**{c: getattr(run, c) for c in CONTROL_COLUMNS})
        blocks = self.backend.blocks()
        if blocks:
            from store.sweep.methods import is_set_method

            # A set has no source: its subject words need only be in each image's own prompt.
            source = None if is_set_method(run.method or "") else run.source_prompt
            spec.validate(run.num_steps, blocks, run.target_prompt, source)
        return spec

    def _run_chunk(
        self,
        source: SourceJob,
        chunk: list[TargetJob],
        by_id: dict[int, Run],
        as_set: bool = False,
    ) -> None:
        ids = [t.run_id for t in chunk]
        self.progress.start(
            ids[0], source.num_steps, f"runs {ids[0]}..{ids[-1]} ({len(ids)} targets)"
        )
        t0 = time.monotonic()
        last_check = [t0]

        def on_step(i: int, n: int) -> None:
            self.progress.tick(i, n)
            if self.stop_event.is_set():
                raise Interrupted()
            now = time.monotonic()
            if now - last_check[0] >= self.config.cancel_check_s:
                last_check[0] = now
                # Only a batch cancelled as a whole stops; a partly cancelled one finishes and
                # its cancelled runs end cancelled at commit.
                if set(ids) <= cancel_requested_ids(self.store, ids):
                    raise Cancelled()

        self.stats["generate_calls"] += 1
        artifacts.fault("generate", self.home.root)  # test faults (MTP_FAULT=oserror:FLAG)
        # A backend without set generation (the fake one) paints one image per run of the set.
        generate_set = getattr(self.backend, "generate_set", None) if as_set else None
        if generate_set is not None:
            result = generate_set(source, chunk, on_step)
        else:
            result = self.backend.generate(source, chunk, on_step)
        elapsed = time.monotonic() - t0
        log.info(
            "generated %d target(s) in %.1fs (%.2f it/s)",
            len(chunk),
            elapsed,
            source.num_steps / elapsed if elapsed > 0 else 0.0,
        )

        runs = [by_id[i] for i in ids]
        results: list[dict[str, Any]] = []
        for k, run in enumerate(runs):
            try:
                paths = write_run_artifacts(
                    self.home,
                    run.id,
                    result.images[k],
                    result.source_image,
                    result.masks[k] if k < len(result.masks) else None,
                    result.maps[k] if k < len(result.maps) else None,
                )
            except OSError as exc:
                fault = artifact_write_fault(exc, self.home)
                if fault is None:
                    raise
                raise fault from exc
            results.append(
                dict(
                    paths,
                    run_id=run.id,
                    duration_s=elapsed / len(runs),
                    scores=[],
                    session_id=self._session_id(),
                )
            )
        if self.score is not None:
            self.progress.message = f"scoring runs {ids[0]}..{ids[-1]}"
            self._score(runs, result, results, by_id)
        # Said before the commit: a log ending here means the engine died committing these runs
        # (they are either all done or all re-run, never half).
        # A database file deleted, replaced or made unreadable under the open connection would
        # take this commit and lose it (or hide it): pause instead, the runs are redone later.
        self._check_database()
        log.info("committing run(s) %s", ids)
        done = complete_runs(self.store, self.worker_id, results)
        if done:
            self._streak.clear()  # a run came out fine: whatever failed before was not the engine
        self.claimed = [i for i in self.claimed if i not in ids]
        self.stats["done"] += len(done)
        for rid in done:
            log.info("run %d done", rid)
        if done and self.score is not None:
            self._prompt_set_scores([by_id[rid] for rid in done if rid in by_id])
        skipped = set(ids) - set(done)
        if skipped:
            log.info("runs %s not marked done (cancelled or no longer ours)", sorted(skipped))

    def _score(
        self, runs: list[Run], result, results: list[dict], claimed: dict[int, Run] | None = None
    ) -> None:
        """Fill each result's scores, or its `score_error` when it could not be scored: one
        concept's bad reference image never touches another concept's runs, and a failure
        scoring one run's image never touches the other runs of its concept. The runs of a set
        also get its set-consistency scores (`_set_scores`)."""
        # Runs of one batch can belong to different concepts (group_key ignores the concept).
        by_concept: dict[int | None, list[int]] = {}
        for k, run in enumerate(runs):
            by_concept.setdefault(run.concept_id, []).append(k)
        for concept_id, idx in by_concept.items():
            try:
                refs = self._refs(concept_id)
            except Exception as exc:
                # The references are every run's of this concept: all of them are not scored.
                self._not_scored(runs, results, idx, concept_id, exc)
                continue
            parts = [idx]  # one call per concept; split run by run when it fails
            while parts:
                part = parts.pop(0)
                try:
                    texts = [
                        self.scored_text(
                            runs[k].target_prompt, runs[k].token or "", runs[k].class_word or ""
                        )
                        for k in part
                    ]
                    scores = self.score(
                        [result.images[k] for k in part], texts, result.source_image, refs
                    )
                except Exception as exc:
                    # A scorer that cannot load fails every run alike: not worth a call per run.
                    shared = isinstance(exc, ScorerUnavailable) or systemic_reason(exc) is not None
                    if len(part) > 1 and not shared and not is_oom(exc):
                        parts = [[k] for k in part] + parts
                        continue
                    self._not_scored(runs, results, part, concept_id, exc)
                    continue
                for k, sc in zip(part, scores):
                    results[k]["scores"] = list(sc)
            try:
                self._set_scores(
                    [runs[k] for k in idx],
                    [result.images[k] for k in idx],
                    [results[k] for k in idx],
                    claimed or {},
                )
            except Exception as exc:
                if systemic_reason(exc) is not None or is_oom(exc):
                    raise
                # The per-image scores stand; `mtp score --rescore` can add the set's later.
                log.error(
                    "set scores of runs %s failed:\n%s",
                    [runs[k].id for k in idx],
                    traceback.format_exc(),
                )

    def _set_scores(
        self, runs: list[Run], images: list, results: list[dict], claimed: dict[int, Run]
    ) -> None:
        """Mean pairwise CLIP-I / DINO / DreamSim among the images of each whole set here."""
        set_scores = getattr(self.score, "set_scores", None)
        if set_scores is None:
            return
        from store.sweep.methods import is_set_method

        sets: dict[str, list[int]] = {}
        for k, run in enumerate(runs):
            if is_set_method(run.method or ""):
                sets.setdefault(run.group_key, []).append(k)
        for key, idx in sets.items():
            # Only a whole set: a partial one would score a different set than the one made.
            whole = sum(1 for r in claimed.values() if r.group_key == key)
            if len(idx) < 2 or (claimed and len(idx) != whole):
                continue
            for k, sc in zip(idx, set_scores([images[k] for k in idx])):
                results[k]["scores"] = list(results[k]["scores"]) + list(sc)

    def _prompt_set_scores(self, runs: list[Run]) -> None:
        """MasaCtrl's targets of one seed and configuration over a study unit's prompts are a
        set too, generated batch by batch: scored from the images on disk once the set's last
        image is committed (whichever engine commits it; a second computation replaces the
        first with the same values). A failure leaves the per-image scores; `mtp score
        --rescore` adds the set's later."""
        set_scores = getattr(self.score, "set_scores", None)
        if set_scores is None:
            return
        from store.queries import prompt_set_runs, study_experiment_ids
        from store.scoring import save_scores
        from store.sweep.methods import is_set_method

        # a set method's runs are scored with their set in _set_scores; outside a study,
        # MasaCtrl's prompts are no set: one query tells, before any per-run work
        runs = [r for r in runs if not is_set_method(r.method or "")]
        studied = study_experiment_ids(self.store, {r.experiment_id for r in runs})
        seen: set[tuple[int, ...]] = set()
        for run in runs:
            if run.experiment_id not in studied or any(run.id in ids for ids in seen):
                continue
            try:
                members = prompt_set_runs(self.store, run)
                ids = tuple(m.id for m in members)
                if ids in seen:
                    continue
                seen.add(ids)
                images = artifacts.read_set_images(self.home, members)
                if images is None:
                    continue
                out = set_scores(images)
                session = self._session_id()
                save_scores(
                    self.store,
                    [
                        {
                            "run_id": m.id,
                            "scores": sc,
                            "score_error": m.score_error,
                            "session_id": session,
                        }
                        for m, sc in zip(members, out)
                    ],
                )
            except Exception as exc:
                if systemic_reason(exc) is not None:
                    raise
                log.error("set scores of runs %s failed:\n%s", [run.id], traceback.format_exc())

    def _not_scored(self, runs, results, idx: list[int], concept_id, exc: Exception) -> None:
        if systemic_reason(exc) is not None or is_oom(exc):
            raise exc  # a machine fault pauses the engine; OOM retries the batch smaller
        # The images are good: the runs end done with them, marked not scored and why
        # (`mtp score` scores them later).
        reason = str(exc) if isinstance(exc, RunError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, RunError):
            log.error(
                "scoring runs %s (concept %s) failed:\n%s",
                [runs[k].id for k in idx],
                concept_id,
                "".join(traceback.format_exception(exc)),
            )
        log.warning("runs %s not scored: %s", [runs[k].id for k in idx], reason)
        for k in idx:
            results[k]["score_error"] = reason

    def _session_id(self) -> int | None:
        """The EngineSession row of the loaded model, written once per model load."""
        if self.loaded is None:
            return None
        if self._session is None or self._session[0] != self.loaded:
            from store.scoring import record_engine_session

            from .provenance import library_versions

            try:
                identity = getattr(self.backend, "identity", None)
                fields = dict(identity() if identity else {"model": self.loaded.model})
                fields.setdefault("device", self.config.device)
                scorer = scorer_description(self.score)
                sid = record_engine_session(
                    self.store,
                    worker_id=self.worker_id,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    versions=library_versions(),
                    scorers=scorer.get("backbones") or self.scorers,
                    role="generate",
                    scorer_device=scorer.get("device", ""),
                    scorer_dtype=scorer.get("dtype", ""),
                    preprocess=scorer.get("preprocess", {}),
                    **fields,
                )
            except Exception:
                # The record is worth less than the images: go on without it, try again next batch.
                log.warning("could not record the engine session:\n%s", traceback.format_exc())
                return None
            self._session = (self.loaded, sid)
        return self._session[1]

    def _refs(self, concept_id: int | None) -> list[Path]:
        if concept_id is None:
            return []
        with self.store.session() as s:
            concept = s.get(Concept, concept_id)
        rels = concept.ref_images if concept else []
        key = (concept_id, tuple(rels))  # a concept edited while the engine runs is re-checked
        if key in self._refs_cache:
            return self._refs_cache[key]
        refs: list[Path] = []
        for rel in rels:
            path = self.home.resolve_artifact(rel)
            problem = image_problem(path)
            if problem:
                raise RunError(f"reference image {problem}")
            refs.append(path)
        self._refs_cache[key] = refs
        return refs

    # ---------------------------------------------------------- endings
    def _fail(self, run_ids: list[int], error: str, exc: BaseException | None = None) -> None:
        """Fail runs with ``error``. ``exc`` is given where the failure may be the engine's rather
        than the runs' (generation, artifacts): those count towards the brake (_note_failures).
        A run's own bad input, or a model that cannot be loaded, is never the engine's."""
        failed = fail_runs(self.store, self.worker_id, run_ids, error)
        self.claimed = [i for i in self.claimed if i not in run_ids]
        self.stats["failed"] += len(failed)
        log.warning("run(s) %s failed: %s", failed, error)
        if exc is not None and failed:
            self._note_failures(failed, exc, error)

    def _note_failures(self, run_ids: list[int], exc: BaseException, error: str) -> None:
        """The brake: ``brake_after`` runs in a row failing with one error signature, spanning
        at least two experiments or two models, mean the engine is sick (an environment that
        fails everything); it raises EngineSick, which pauses it (_brake)."""
        limit = self.config.brake_after
        if limit <= 0:
            return
        sig = error_signature(exc)
        if self._streak and self._streak[-1][0] != sig:
            self._streak.clear()
        origins = run_origins(self.store, run_ids)
        for rid in run_ids:
            exp_id, model = origins.get(rid, (-1, ""))
            self._streak.append((sig, exp_id, model, rid, error))
        del self._streak[:-1000]  # one experiment failing for days must not grow it forever
        if len(self._streak) < limit:
            return
        exps = {e for _, e, _, _, _ in self._streak}
        models = {m for _, _, m, _, _ in self._streak}
        if len(exps) < 2 and len(models) < 2:
            return
        example = self._streak[-1][4]
        if len(example) > 200:
            example = example[:199] + "…"
        reason = (
            f"engine stopped itself: {len(self._streak)} runs of {len(exps)} experiments"
            + (f" and {len(models)} models" if len(models) > 1 else "")
            + f" failed in a row with the same error ({example}); the engine looks broken, not "
            "the runs, so they went back to the queue. Fix the cause, then `mtp queue resume` "
            "or restart the engine"
        )
        raise EngineSick(reason, [rid for _, _, _, rid, _ in self._streak])

    def _cancelled(self, run_ids: list[int]) -> None:
        # fail_runs turns runs with cancel_requested into cancelled.
        fail_runs(self.store, self.worker_id, run_ids, "cancelled by the user while running")
        self.claimed = [i for i in self.claimed if i not in run_ids]
        self.stats["cancelled"] += len(run_ids)
        log.info("run(s) %s cancelled", run_ids)


def scorer_description(score) -> dict:
    """``score.describe()`` (engine.scoring.Scorer) when the scorer has one, else {}: a scorer
    that cannot load now is reported on its runs, not here."""
    describe = getattr(score, "describe", None)
    if describe is None:
        return {}
    try:
        return dict(describe() or {})
    except Exception as exc:
        log.warning("could not describe the scorer: %s", exc)
        return {}
