"""`mtp queue | cancel | requeue | priority | workers | engine`: drive the queue and the engines
headless (over SSH, from scripts) exactly as the app does (`engine submit | jobs`: tui.cli.cluster)."""

from __future__ import annotations

import argparse
import sys

from store import queue as q
from store.models import RunStatus
from store.queries import InputError, experiment_by_ref

from .out import echo, one


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("queue", help="queue status, pause and resume")
    p.add_argument("action", nargs="?", default="status", choices=["status", "pause", "resume"])
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser(
        "cancel", help="cancel an experiment's unfinished runs, or single runs with --run"
    )
    p.add_argument("experiment", nargs="?", help="experiment id or name")
    p.add_argument("--run", type=int, action="append", default=[], help="run id (repeatable)")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser(
        "requeue",
        help="put an experiment's failed/cancelled runs (or single runs) back in the queue",
    )
    p.add_argument("experiment", nargs="?", help="experiment id or name")
    p.add_argument(
        "--status", default="failed,cancelled", help="comma separated: failed, cancelled, done"
    )
    p.add_argument("--run", type=int, action="append", default=[], help="run id (repeatable)")
    p.set_defaults(func=cmd_requeue)

    p = sub.add_parser("priority", help="set an experiment's priority (higher runs first)")
    p.add_argument("experiment")
    p.add_argument("priority", type=int)
    p.set_defaults(func=cmd_priority)

    p = sub.add_parser("workers", help="engine workers: device, status, heartbeat, progress")
    p.add_argument(
        "--recover",
        action="store_true",
        help="first requeue runs of workers that stopped heartbeating",
    )
    p.set_defaults(func=cmd_workers)

    p = sub.add_parser(
        "engine",
        help="start, stop or show detached engines on this machine; submit engines to SLURM "
        "(submit, jobs; stop cancels them too)",
    )
    p.add_argument("action", choices=["start", "stop", "status", "submit", "jobs"])
    p.add_argument(
        "--device",
        default=None,
        help="cuda:0, cpu, ... (start default: cpu; stop/status default: all)",
    )
    p.add_argument(
        "--devices",
        default=None,
        help="start: one detached engine per device, e.g. cuda:0,cuda:1 or `all` (every GPU of this host)",
    )
    p.add_argument("--max-batch", type=int, default=None)
    from . import cluster

    cluster.add_arguments(p)
    p.set_defaults(func=cmd_engine, creates_home=True)


def _experiment(store, ref: str):
    exp = experiment_by_ref(store, ref)
    if exp is None:
        raise InputError(f"experiment {ref!r} does not exist")
    return exp


def _age(dt, now) -> str:
    """How long ago ``dt`` was by the database's clock (``now``), which wrote it: this host's
    clock may be minutes off."""
    s = q.age_s(dt, now)
    if s is None:
        return "-"
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago"


def cmd_queue(args, store) -> int:
    if args.action == "pause":
        q.set_paused(store, True)
        echo("queue paused: engines finish their current batch and claim nothing new")
    elif args.action == "resume":
        q.set_paused(store, False)
        echo("queue resumed")
    st = q.queue_status(store)
    counts = ", ".join(f"{st.counts.get(k, 0)} {k}" for k in RunStatus.ALL)
    echo(f"queue {'PAUSED' if st.paused else 'active'}: {counts}")
    live = [w for w in st.workers if w.status in q.WorkerStatus.LIVE]
    echo(f"{len(live)} live worker(s)")
    for w in live:
        if w.status == q.WorkerStatus.PAUSED:
            # An engine that cannot write keeps its runs queued and retries; say why it waits.
            echo(f"engine {one(w.id)} on {one(w.device)} is PAUSED: {one(w.message)}")
    return 0


def cmd_cancel(args, store) -> int:
    if args.run:
        res = q.cancel_runs(store, args.run)
    elif args.experiment:
        res = q.cancel_experiment(store, _experiment(store, args.experiment).id)
    else:
        raise InputError("cancel: give an experiment or --run ID")
    echo(
        f"cancelled {res['cancelled']} queued run(s); {res['requested']} running run(s) will stop at their next step"
    )
    return 0


def cmd_requeue(args, store) -> int:
    if args.run:
        n = q.requeue_runs(store, args.run)
    elif args.experiment:
        statuses = [s.strip() for s in args.status.split(",") if s.strip()]
        bad = [s for s in statuses if s not in RunStatus.FINISHED]
        if bad:
            raise InputError(
                f"--status: {', '.join(bad)} cannot be requeued (use failed, cancelled or done)"
            )
        n = q.requeue(store, _experiment(store, args.experiment).id, statuses)
    else:
        raise InputError("requeue: give an experiment or --run ID")
    echo(f"requeued {n} run(s)")
    return 0


def cmd_priority(args, store) -> int:
    exp = _experiment(store, args.experiment)
    n = q.set_priority(store, exp.id, args.priority)
    echo(
        f"experiment {exp.id} ({one(exp.name)}): priority {args.priority}, {n} queued run(s) moved"
    )
    return 0


def cmd_workers(args, store) -> int:
    from engine.slurm import job_label

    if args.recover:
        rec = q.recover_stale(store)
        echo(
            f"requeued {len(rec.requeued)} run(s), failed {len(rec.failed)} (dead workers: {len(rec.dead_workers)})"
        )
    workers = q.list_workers(store)
    now = q.database_now(store)
    if not workers:
        echo("no workers have run on this database")
        return 0
    echo(
        f"{'worker':40} {'device':8} {'status':8} {'heartbeat':10} {'run':>6} {'step':>9} {'it/s':>6} "
        f"{'slurm job':16}  message"
    )
    for w in workers:
        step = f"{w.step}/{w.total_steps}" if w.total_steps else "-"
        rate = f"{w.its_per_s:.2f}" if w.its_per_s else "-"
        echo(
            f"{one(w.id)[:40]:40} {one(w.device):8} {w.status:8} {_age(w.heartbeat_at, now):10} {w.current_run_id or '-':>6} "
            f"{step:>9} {rate:>6} {one(job_label(w)):16}  {one(w.message)}"
        )
    return 0


def cmd_engine(args, store) -> int:
    from engine.launch import EngineError, engine_running, start_engine, stop_engine

    from . import cluster

    home = store.home
    if args.action == "submit":
        return cluster.cmd_submit(args, store)
    if args.action == "jobs":
        return cluster.cmd_jobs(args, store)
    if args.action == "start" and args.devices:
        return _start_many(args, home)
    if args.action == "start":
        device = args.device or "cpu"
        extra = ["--max-batch", str(args.max_batch)] if args.max_batch else []
        try:
            pid = start_engine(home, device=device, demo=args.demo, extra_args=extra)
        except EngineError as exc:
            echo(f"mtp: {exc}", file=sys.stderr)
            return 1
        echo(f"engine started on {device}: pid {pid}; log {home.logs}")
        return 0
    if args.action == "stop":
        # Local engines and this data folder's SLURM jobs (their engines give their runs back).
        pids = [] if args.job else stop_engine(home, args.device, wait_s=30)
        jobs, problem = cluster.stop_jobs(args, store)
        if problem:
            echo(f"mtp: SLURM jobs not cancelled: {problem}", file=sys.stderr)
        if pids:
            left = [e for e in engine_running(home, args.device) if not e.get("job")]
            echo(
                f"stopped engine pid(s) {', '.join(map(str, pids))}"
                + (" (still finishing)" if left else "")
            )
        if jobs:
            echo(f"cancelled SLURM job(s) {', '.join(jobs)}")
        if not pids and not jobs:
            echo("no engine is running" + (f" on {args.device}" if args.device else ""))
            return 1
        return 0
    running = engine_running(home, args.device)
    if not running:
        echo("no engine is running" + (f" on {args.device}" if args.device else ""))
        return 1
    for e in running:
        echo(f"{e['device']}: pid {e['pid']}, log {e['log']}")
    return 0


def _start_many(args, home) -> int:
    from engine.launch import EngineError, parse_devices, start_engines

    if args.device:
        raise InputError("engine start: give --device or --devices, not both")
    try:
        devices = parse_devices(args.devices)
    except EngineError as exc:
        raise InputError(str(exc)) from None
    extra = ["--max-batch", str(args.max_batch)] if args.max_batch else []
    started, failed = start_engines(home, devices, demo=args.demo, extra_args=extra)
    for dev, pid in started.items():
        echo(f"engine started on {dev}: pid {pid}")
    for dev, why in failed.items():
        echo(f"mtp: {dev}: {why}", file=sys.stderr)
    echo(f"{len(started)} of {len(devices)} engine(s) started; logs in {home.logs}")
    return 0 if not failed else 1
