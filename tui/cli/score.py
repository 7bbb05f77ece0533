"""`mtp score EXPERIMENT`: score existing images without regenerating them.

The command only writes a ScoreRequest (store.scoring); an engine does the work, because the
`mtp` command never imports torch. A running engine on this database picks the request up when
it has nothing to generate; with none running here, a detached score-only engine
(`mtp-engine --score-only --once`) is started for it and exits when the work is done.
"""

from __future__ import annotations

import argparse
import sys
import time

from store.models import ScoreRequestStatus
from store.queries import InputError, experiment_by_ref

from .out import echo, one


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score", help="score an experiment's existing images (no regeneration) on an engine"
    )
    p.add_argument("experiment", help="experiment id or name")
    p.add_argument(
        "--metric",
        action="append",
        default=[],
        help="metric family: clip, dino, dreamsim (repeatable or comma separated; default clip,dino)",
    )
    p.add_argument(
        "--rescore",
        action="store_true",
        help="replace existing scores of these metrics (default: score only runs that lack them)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="device of the score-only engine started when none runs (default cpu)",
    )
    p.add_argument("--no-wait", action="store_true", help="queue the request and return at once")
    p.add_argument(
        "--timeout", type=float, default=None, help="stop waiting after this many seconds"
    )
    p.set_defaults(func=cmd_score)


def _on_demo_model(store, experiment_id: int) -> bool:
    from sqlmodel import select

    from store.models import Run

    demo = {str(store.home.demo_model), "tiny", "tiny-sd", "demo"}
    with store.session() as s:
        models = set(s.exec(select(Run.model).where(Run.experiment_id == experiment_id).distinct()))
    return bool(models) and models <= demo


def _live_engines(store) -> int:
    from store import queue as q

    now = q.database_now(store)  # heartbeats carry the database's clock, not this host's
    return sum(1 for w in q.list_workers(store) if not q.worker_is_stale(w, now=now))


def cmd_score(args, store) -> int:
    from engine.launch import EngineError, engine_running, log_path, start_engine, tail
    from store.queue import is_paused
    from store.scoring import get_request, parse_families, request_scoring

    exp = experiment_by_ref(store, args.experiment)
    if exp is None:
        raise InputError(f"experiment {args.experiment!r} does not exist")
    families = parse_families(",".join(args.metric) if args.metric else None)
    req, created = request_scoring(store, exp.id, families, rescore=args.rescore)
    what = ",".join(families) + (" (rescore)" if args.rescore else "")
    echo(
        f"score request #{req.id} for experiment {exp.id} ({one(exp.name)}): {what}"
        + ("" if created else " (already queued)")
    )
    home = store.home
    demo = args.demo or _on_demo_model(store, exp.id)
    extra = ["--score-only", "--once", "--metrics", ",".join(families)]

    def start() -> bool:
        try:
            # Long enough for the engine to load its scorer, so a refusal comes back as a message.
            pid = start_engine(home, device=args.device, demo=demo, extra_args=extra, wait_s=120)
        except EngineError as exc:
            echo(f"mtp: {exc}", file=sys.stderr)
            return False
        echo(
            f"started a score-only engine on {args.device}{' (demo scorer)' if demo else ''}: pid {pid}"
        )
        return True

    started = False
    if not engine_running(home) and not _live_engines(store):
        if not start():
            return 1
        started = True
    else:
        echo("a running engine will pick it up when it has nothing to generate")
    if args.no_wait:
        return 0
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    last = None
    while True:
        cur = get_request(store, req.id)
        if cur.status == ScoreRequestStatus.QUEUED:
            line = "waiting for an engine" + (
                " (the queue is paused: mtp queue resume)" if is_paused(store) else ""
            )
        else:
            line = f"scored {cur.scored + cur.failed}/{cur.total} run(s)"
        if line != last:
            echo(line, flush=True)
            last = line
        if cur.status == ScoreRequestStatus.DONE:
            note = f", {cur.failed} not scorable (see `mtp runs`)" if cur.failed else ""
            echo(
                f"done: {cur.scored} run(s) scored{note}"
                if cur.total
                else "nothing to score: every done run already has these scores"
            )
            return 0 if not cur.failed else 1
        if cur.status == ScoreRequestStatus.FAILED:
            echo(f"mtp: scoring failed: {cur.error}", file=sys.stderr)
            return 1
        if (
            cur.status == ScoreRequestStatus.QUEUED
            and not engine_running(home)
            and not _live_engines(store)
        ):
            if not started:
                # The engine seen running at first has exited (e.g. a --once engine finishing).
                if not start():
                    return 1
                started = True
                time.sleep(0.5)
                continue
            if started:
                log = tail(log_path(home, args.device), 8)
                echo(
                    f"mtp: the score-only engine exited without taking the request:\n{log}",
                    file=sys.stderr,
                )
            else:
                echo(
                    "mtp: no engine is running to take the request; start one with `mtp engine start`",
                    file=sys.stderr,
                )
            return 1
        if deadline is not None and time.monotonic() > deadline:
            echo(
                f"still {line}; the request stays queued (check with `mtp score {exp.id} --no-wait`)"
            )
            return 0
        time.sleep(0.5)
