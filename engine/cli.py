"""`mtp-engine`: run queued runs on one device (or one worker process per GPU with --devices).

torch is imported only after the arguments are parsed and (with --device given) the device lock
is held, so --help is instant and a second engine on a busy device is refused before it pays
for torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backends.base import Backend

log = logging.getLogger("mtp.engine")

BACKENDS = ("diffusers", "fake")


# The engine's own options, one row each: the parser is built from this table, and so is the
# command line of the engines `--devices` starts (every option as given, the device replaced).
ENGINE_OPTIONS: list[tuple[str, dict]] = [
    (
        "--device",
        dict(default=None, help="torch device, e.g. cuda:0 or cpu (default: cuda:0 if available)"),
    ),
    (
        "--devices",
        dict(
            default=None,
            help="one worker process per device, in the foreground: cuda:0,cuda:1, 0,1 or all "
            "(`mtp engine start --devices` starts them detached)",
        ),
    ),
    ("--max-batch", dict(type=int, default=8, help="targets per shared-source batch (default 8)")),
    ("--once", dict(action="store_true", help="drain the queue and exit")),
    (
        "--drain",
        dict(
            action="store_true",
            help="like --once, but before exiting wait while other engines still hold runs, so "
            "the runs of one that is stopped or dies are finished too (`mtp engine submit --drain`)",
        ),
    ),
    (
        "--poll",
        dict(type=float, default=2.0, help="seconds between queue polls when idle (default 2)"),
    ),
    ("--heartbeat", dict(type=float, default=5.0, help="seconds between heartbeats (default 5)")),
    (
        "--stale-after",
        dict(
            type=float,
            default=60.0,
            help="a worker silent this long is dead and its runs are requeued (default 60)",
        ),
    ),
    (
        "--max-attempts",
        dict(
            type=int,
            default=5,
            help="engine deaths while a run is being generated before that run is failed as the "
            "likely cause (default 5; deaths during model load or restarts do not count)",
        ),
    ),
    (
        "--no-score",
        dict(
            action="store_true",
            help="finish runs without computing scores (score them later with `mtp score`)",
        ),
    ),
    (
        "--metrics",
        dict(
            default="clip,dino",
            help="metric families scored for new runs: clip, dino, dreamsim (default clip,dino)",
        ),
    ),
    (
        "--score-only",
        dict(
            action="store_true",
            help="only score existing images (`mtp score` requests); generate nothing",
        ),
    ),
    (
        "--backend",
        dict(
            choices=BACKENDS,
            default=None,
            help="generator: diffusers (default), or fake = flat-colour images without torch or "
            "weights, to check a queue or multi-host setup (default: $MTP_ENGINE_BACKEND or diffusers)",
        ),
    ),
    ("--verbose", dict(action="store_true", help="log debug lines too")),
]


def build_parser() -> argparse.ArgumentParser:
    from store.entrypoint import add_common_arguments

    p = argparse.ArgumentParser(
        prog="mtp-engine",
        description="Run queued mtp runs: claim a group, generate source + targets in one batch, "
        "write artifacts, score, commit. Stops cleanly on SIGTERM/SIGINT, giving its runs back "
        "uncharged; SIGUSR1 (SLURM's warning before a time limit or preemption) does the same "
        "and, inside a SLURM job, requeues the job. Ignores SIGHUP, so "
        "an engine started in a terminal keeps working when the terminal closes. "
        "On a full disk, a read-only data folder or an unusable database it pauses "
        "(runs stay queued) and resumes when the fault clears; with --once it exits 4 instead. "
        "--demo serves the demo data folder (as `mtp --demo` does) with the offline tiny model.",
    )
    add_common_arguments(p)
    for flag, kwargs in ENGINE_OPTIONS:
        names = (flag, "-v") if flag == "--verbose" else (flag,)
        p.add_argument(*names, **kwargs)
    return p


def child_argv(args: argparse.Namespace, device: str) -> list[str]:
    """The command line of one engine of `--devices`: this one's options on `device`."""
    argv = ["--device", device]
    for flag, kwargs in [("--home", {}), ("--db", {}), ("--demo", {"action": "store_true"})] + [
        row for row in ENGINE_OPTIONS if row[0] not in ("--device", "--devices")
    ]:
        value = getattr(args, flag[2:].replace("-", "_"))
        if kwargs.get("action") == "store_true":
            argv += [flag] if value else []
        elif value is not None and value != kwargs.get("default"):
            argv += [flag, str(value)]
    return argv


def _setup_logging(logfile: Path, verbose: bool, stderr_is_log: bool = False) -> None:
    """Log to ``logfile`` and stderr, once: ``stderr_is_log`` says stderr already reaches the log
    (a SLURM job step's output goes through a pipe to the job's log file)."""
    root = logging.getLogger("mtp")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Libraries that call logging.basicConfig() would otherwise print every line twice.
    root.propagate = False
    from store.safe_text import SafeFormatter

    # Lines echo names, paths, prompts and error texts: written with their controls escaped.
    fmt = SafeFormatter("%(asctime)s %(levelname)s [%(process)d] %(message)s")
    logfile.parent.mkdir(parents=True, exist_ok=True)
    to_log: logging.Handler | None = None
    if not stderr_is_log:
        to_log = logging.FileHandler(logfile)
        to_log.setFormatter(fmt)
        root.addHandler(to_log)
    # A detached engine's stderr already is the log file; a second handler would double lines.
    try:
        same = os.path.samestat(os.fstat(2), os.stat(logfile))
    except OSError:
        same = False
    to_terminal: logging.Handler | None = None
    if stderr_is_log or not same:
        to_terminal = logging.StreamHandler(sys.stderr)
        to_terminal.setFormatter(fmt)
        root.addHandler(to_terminal)
    if stderr_is_log:  # the job's output is the log: stderr is the log handler
        to_log, to_terminal = to_terminal, None
    # Libraries log on the root logger (open_clip's "No pretrained weights loaded" through
    # logging.warning, which would also install a bare "WARNING:root:" stderr handler) and
    # emit Python warnings: both go to the engine log, and to the terminal only with -v.
    libraries = logging.getLogger()
    libraries.setLevel(logging.WARNING)
    if to_log is not None:
        libraries.addHandler(to_log)
    if verbose and to_terminal is not None:
        libraries.addHandler(to_terminal)
    logging.captureWarnings(True)


def _default_device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _run_many(args) -> int:
    """Parent of one engine process per GPU; forwards SIGTERM/SIGINT and waits for all."""
    from store.entrypoint import say

    from .launch import EngineError, parse_devices

    try:
        devices = parse_devices(args.devices)
    except EngineError as exc:
        say("mtp-engine", exc)
        return 2
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as each engine does
    procs = [
        subprocess.Popen([sys.executable, "-m", "engine.cli", *child_argv(args, dev)])
        for dev in devices
    ]

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max((p.wait() for p in procs), default=0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from store.entrypoint import exit_code, say, start
    from store.errors import MtpError
    from store.settings import settings

    try:
        where = start("mtp-engine", args)
        if args.devices:
            return _run_many(args)
        home = where.resolve_home()
    except MtpError as exc:
        return exit_code("mtp-engine", exc)

    # SLURM's warning before a time limit or preemption may come while torch loads; its default
    # action would kill the engine, so it is noted now and acted on once the worker exists.
    signal.signal(signal.SIGUSR1, lambda signum, _frame: _early_signals.append(signum))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .launch import DeviceLock, EngineAlreadyRunning, EngineError, log_path, normalize_device
    from .slurm import current_job

    fake = (args.backend or settings().engine_backend or "diffusers") == "fake"
    try:
        # One spelling per device, so `cuda` and `cuda:0` share a lock, a log and a worker id.
        device = normalize_device(args.device or ("cpu" if fake else _default_device()))
    except EngineError as exc:
        say("mtp-engine", exc)
        return 2
    job = current_job()
    job_id = job.job_id if job else None
    try:
        lock = DeviceLock(home, device, job=job_id).acquire()
    except EngineAlreadyRunning as exc:
        say("mtp-engine", exc)
        return 3
    except OSError as exc:
        say(
            "mtp-engine",
            f"cannot create the device lock in the data folder {home.root} "
            f"({exc.strerror or exc}); the data folder must be writable by you",
        )
        return 2
    try:
        logfile = log_path(home, device, job=job_id)
        try:
            # In a job step, stderr is a pipe to srun, which writes the job's output: this same
            # file (sbatch --output of `mtp engine submit`).
            _setup_logging(logfile, args.verbose, stderr_is_log=bool(job_id) and _stderr_is_pipe())
        except OSError as exc:
            say("mtp-engine", f"cannot write the log {logfile} ({exc.strerror or exc})")
            return 2
        return _serve(args, home, device, fake, ready=lock.mark_ready)
    finally:
        lock.release()


def _serve(args, home, device: str, fake: bool, ready=lambda: None) -> int:
    from store.db import Store, StoreError

    from .worker import Worker, WorkerConfig

    try:
        store = Store(home, url=args.db)
    except StoreError as exc:
        log.error("refusing to start: %s", exc)
        return 2
    score = None
    scored_text = None
    scorer = None
    if args.score_only and (fake or args.no_score):
        log.error("--score-only needs the real scorer (not --backend fake or --no-score)")
        store.close()
        return 2
    backend: Backend
    if fake:
        from .backends.fake import FakeBackend, fake_score

        backend = FakeBackend.from_env()
        score = None if args.no_score else fake_score
        scored_text = lambda prompt, token, class_word: prompt  # noqa: E731
    else:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
        if not args.no_score:
            # Checked once, here: an engine that cannot score says so now, instead of generating
            # images and then failing every run.
            from store.queries import InputError
            from store.scoring import parse_families

            try:
                families = parse_families(args.metrics)
            except InputError as exc:
                log.error("%s", exc)
                store.close()
                return 2
            scorer = LazyScorer(home, args.demo, device, families)
            try:
                scorer.load()
            except Exception as exc:
                msg = (
                    f"mtp-engine: cannot score: {exc}\nFix: put the weights where the message says "
                    f"(the Hugging Face cache is $HF_HOME, default ~/.cache/huggingface), or start the engine "
                    f"with --no-score and score later with `mtp score EXPERIMENT`."
                )
                log.error(
                    "%s", msg
                )  # the log handler prints it on stderr too when run in a terminal
                store.close()
                return 4
            score = scorer
        if args.demo and not args.score_only:
            from .tiny import ensure_tiny_pipeline

            log.info("demo mode: tiny model at %s", ensure_tiny_pipeline(home.models))
        from .backends.diffusion import PipelineBackend

        backend = PipelineBackend(device, home=home)
        if scorer is not None:
            scorer.backend = backend  # runs on a tiny model get the tiny offline scorer
    from .slurm import current_job

    job = current_job()
    config = WorkerConfig(
        device=device,
        max_batch=max(1, args.max_batch),
        poll_s=args.poll,
        once=args.once or args.drain,
        drain=args.drain,
        slurm_job_id=job.job_id if job else None,
        slurm_node=job.node if job else None,
        heartbeat_s=args.heartbeat,
        stale_after_s=args.stale_after,
        max_attempts=args.max_attempts,
    )
    worker = Worker(store, backend, config, score=score, scored_text=scored_text)
    if scorer is not None:
        from .rescore import Rescorer

        worker.scorers = scorer.backbones()
        worker.rescorer = Rescorer(
            store,
            worker.worker_id,
            scorer.for_families,
            worker.scored_text,
            stop_event=worker.stop_event,
            stale_after_s=args.stale_after,
            on_progress=lambda m: setattr(worker.progress, "message", m),
        )

    def on_signal(signum, _frame):
        log.info("signal %d: finishing up and releasing claimed runs", signum)
        worker.stop()

    preempted: list[int] = []

    def on_warning(signum, _frame):
        # SLURM's warning (sbatch --signal=B:USR1@...): the time limit or a preemption is near.
        # The runs go back uncharged (as on SIGTERM) and the job asks to be requeued on exit.
        log.info(
            "signal %d: the scheduler will end this job soon; giving runs back and stopping", signum
        )
        preempted.append(signum)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, on_warning)
    if _early_signals:
        on_warning(_early_signals[0], None)
    # A queue worker outlives the terminal it was started from (README, "Headless use").
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    ready()
    log.info(
        "mtp-engine pid %d on %s, home %s, database %s%s%s",
        os.getpid(),
        device,
        home.root,
        store.display_url,
        " (fake backend)" if fake else "",
        " (score only)" if args.score_only else "",
    )
    try:
        if args.score_only:
            from .rescore import serve_score_only

            assert worker.rescorer is not None  # --score-only refused above without a scorer
            stats = serve_score_only(
                store,
                worker.rescorer,
                device,
                once=args.once or args.drain,
                poll_s=args.poll,
                heartbeat_s=args.heartbeat,
            )
            log.info("score-only engine stopped: %s", stats)
        else:
            worker.run()
        if preempted and job is not None:
            if args.drain and _nothing_left(store):
                log.info("nothing left to do: job %s is not requeued", job.job_id)
            else:
                from .slurm import requeue_self

                log.info("%s", requeue_self())
    finally:
        store.close()
    if worker.fault and not worker.stop_event.is_set():
        log.error("mtp-engine stopped, cannot go on: %s (its runs are left queued)", worker.fault)
        return 4
    return 0


_early_signals: list[int] = []


def _stderr_is_pipe() -> bool:
    import stat

    try:
        return stat.S_ISFIFO(os.fstat(2).st_mode)
    except OSError:
        return False


def _nothing_left(store) -> bool:
    from store.queue import queue_status

    try:
        st = queue_status(store)
    except Exception:  # cannot tell: requeue, the next engine decides
        return False
    return not st.queued and not st.running


class LazyScorer:
    """engine.scoring's Scorer for the engine: ``load()`` at start (engine.cli checks it there),
    then called per batch; scorers for other metric families (`mtp score --metric dreamsim`)
    are built on first request and kept. Runs on the offline tiny model are scored with the tiny
    offline backbones even without --demo: their images are noise, and the real backbones may not
    be downloadable on that machine."""

    def __init__(self, home, demo: bool, device: str, families=("clip", "dino"), backend=None):
        self.home, self.demo, self.device, self.families = home, demo, device, tuple(families)
        self.backend = backend
        self._scorer = None
        self._tiny_scorer = None
        self._extra: dict[tuple, object] = {}

    def load(self):
        if self._scorer is None:
            from .scoring import Scorer

            self._scorer = Scorer.for_home(
                self.home, demo=self.demo, device=self.device, families=self.families
            )
        return self._scorer

    def backbones(self) -> dict[str, str]:
        return dict(self.load().backbones)

    def for_families(self, families):
        """A scorer that has every family in ``families`` (raises ScorerUnavailable if one cannot load)."""
        want = tuple(sorted(set(families)))
        if set(want) <= set(self.families):
            return self.load()
        if want not in self._extra:
            from .scoring import Scorer

            self._extra[want] = Scorer.for_home(
                self.home, demo=self.demo, device=self.device, families=want
            )
        return self._extra[want]

    def _on_tiny_model(self) -> bool:
        from store.sweep.spec import TINY_MODEL_NAMES, TINY_SDXL_MODEL_NAMES

        key = getattr(self.backend, "key", None)
        return key is not None and (
            key.model in TINY_MODEL_NAMES or key.model in TINY_SDXL_MODEL_NAMES
        )

    def prepare(self) -> None:
        """Load the scoring models before a batch counts as in flight (the worker calls this). A
        failure is not the runs' fault: it shows again when scoring, where they end done and
        "not scored" with the reason."""
        try:
            self._current()
        except Exception:
            log.exception("cannot load the scorer")

    def __call__(self, images, texts, source, refs):
        return self._current().score(images, texts, source, refs)

    def set_scores(self, images):
        return self._current().set_scores(images)

    def describe(self) -> dict:
        """The scorer the current model's runs are scored with (engine.scoring.Scorer.describe)."""
        return self._current().describe()

    def _current(self):
        # A load failure here (after a successful start check) reaches the worker, which keeps
        # the runs done with their images and records why they are not scored.
        if not self.demo and self._on_tiny_model():
            if self._tiny_scorer is None:
                from .scoring import Scorer

                self._tiny_scorer = Scorer.for_home(
                    self.home, demo=True, device=self.device, families=self.families
                )
            return self._tiny_scorer
        return self.load()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
