"""`mtp engine submit | jobs` and the SLURM half of `mtp engine stop`: engines as cluster jobs
(engine.slurm does the work; this module parses and prints)."""

from __future__ import annotations

import argparse
import sys

from store.queries import InputError

from .out import echo


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `mtp engine` options that only `submit` (and `stop --job`) use."""
    g = p.add_argument_group("submit (SLURM; one job per engine)")
    g.add_argument("--gpus", type=int, default=0, metavar="N", help="N engines, one GPU each")
    g.add_argument(
        "--cpu",
        type=int,
        default=0,
        metavar="N",
        help="N engines on CPU instead (no GPU requested: CPU-only partitions, checks)",
    )
    g.add_argument("--partition", help="sbatch --partition")
    g.add_argument("--time", help="sbatch --time, e.g. 4:00:00 (the engine stops 2 min before)")
    g.add_argument("--account", help="sbatch --account")
    g.add_argument("--constraint", help="sbatch --constraint, e.g. a100")
    g.add_argument(
        "--cpus-per-gpu",
        type=int,
        default=None,
        metavar="K",
        help="CPUs per engine (sbatch --cpus-per-gpu; --cpus-per-task with --cpu; default 1 on CPU)",
    )
    g.add_argument("--mem", help="sbatch --mem per engine job, e.g. 32G")
    g.add_argument(
        "--slurm-arg",
        action="append",
        default=[],
        metavar="ARGS",
        help='more sbatch options, split like a shell would, e.g. --slurm-arg "--qos=low --nice=10"',
    )
    g.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="ARGS",
        help='more mtp-engine options for the submitted engines, e.g. --engine-arg "--no-score"',
    )
    mode = g.add_mutually_exclusive_group()
    mode.add_argument(
        "--drain",
        dest="drain",
        action="store_true",
        default=True,
        help="engines exit once nothing is queued or running, releasing their allocation (default)",
    )
    mode.add_argument(
        "--stay",
        dest="drain",
        action="store_false",
        help="engines keep polling the queue until stopped or the time limit",
    )
    g.add_argument(
        "--job",
        action="append",
        default=None,
        metavar="ID",
        help="stop: cancel only this SLURM job (repeatable)",
    )


def _home_id(store) -> str:
    from store.db import HOME_ID_KEY

    return store.get_meta(HOME_ID_KEY)


def cmd_submit(args, store) -> int:
    from engine.slurm import SlurmError, SubmitRequest, check_database, submit

    extra = list(args.engine_arg)
    if args.max_batch:
        extra.append(f"--max-batch {int(args.max_batch)}")
    req = SubmitRequest(
        gpus=args.gpus,
        cpu=args.cpu,
        partition=args.partition,
        time=args.time,
        account=args.account,
        constraint=args.constraint,
        cpus_per_engine=args.cpus_per_gpu,
        mem=args.mem,
        slurm_args=list(args.slurm_arg),
        drain=args.drain,
        demo=bool(args.demo),
        engine_args=extra,
    )
    url = None if store.is_sqlite else store.url
    try:
        req.check()
        warning = check_database(url)
    except SlurmError as exc:
        hint = (
            " (with --demo only --db counts: the demo otherwise keeps its own SQLite file)"
            if req.demo and url is None
            else ""
        )
        raise InputError(f"engine submit: {exc}{hint}") from None
    if warning:
        echo(f"mtp: note: {warning}", file=sys.stderr)
    try:
        ids = submit(store.home, url, _home_id(store), req)
    except SlurmError as exc:
        if exc.submitted:
            echo(f"submitted job(s) {', '.join(exc.submitted)} before:", file=sys.stderr)
        echo(f"mtp: {exc}", file=sys.stderr)
        return 1
    kind = "GPU" if req.gpus else "CPU"
    echo(
        f"submitted {len(ids)} {kind} engine job(s): {', '.join(ids)} "
        f"({'draining the queue' if req.drain else 'staying until stopped'})"
    )
    echo(f"logs: {store.home.logs}/slurm-<job id>.log; `mtp engine jobs` shows them")
    return 0


def cmd_jobs(args, store) -> int:
    from engine.slurm import SlurmError, list_jobs
    from store import queue as q

    try:
        jobs = list_jobs(_home_id(store))
    except SlurmError as exc:
        echo(f"mtp: {exc}", file=sys.stderr)
        return 1
    if not jobs:
        echo("no engine jobs of this data folder are pending or running in SLURM")
        return 0
    # The newest worker of each job: a requeued job ran an engine per start.
    by_job: dict[str, object] = {}
    for w in sorted(q.list_workers(store), key=lambda w: w.started_at):
        if w.slurm_job_id:
            by_job[w.slurm_job_id] = w
    echo(
        f"{'job':>10} {'state':11} {'elapsed':>10} {'limit':>10} {'partition':10} "
        f"{'node/reason':16} engine"
    )
    for j in jobs:
        w = by_job.get(j.job_id)
        where = j.nodes if j.state == "RUNNING" else (j.reason or j.nodes)
        engine = "-"
        if w is not None:
            engine = f"{w.status} on {w.device}"
            if w.current_run_id:
                engine += f", run {w.current_run_id}"
        echo(
            f"{j.job_id:>10} {j.state:11} {j.elapsed:>10} {j.time_limit:>10} {j.partition:10} "
            f"{where:16} {engine}"
        )
    return 0


def stop_jobs(args, store) -> tuple[list[str], str | None]:
    """The SLURM part of `mtp engine stop`: (job ids cancelled, a problem to print or None)."""
    from engine import slurm

    if args.device:
        return [], None  # a device names an engine of this host, not a job
    if not slurm.available():
        if args.job:
            return [], "SLURM's scancel is not on PATH here"
        return [], None
    try:
        return slurm.cancel_jobs(_home_id(store), args.job, wait_s=60), None
    except slurm.SlurmError as exc:
        return [], str(exc)
