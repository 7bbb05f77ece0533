"""Queue throughput with 1, 4 and 16 engine processes, PostgreSQL against SQLite, plus the 100k-run
CSV export on both.

    .venv/bin/python benchmarks/bench_multihost.py [--runs 1200] [--procs 1,4,16] [--export-runs 100000]

Each engine process is the real loop (engine.worker.Worker with the torch-free FakeBackend:
claim, flat-colour PNGs written, fake score, commit), started and connected before a barrier so
only the queue work is timed. Two figures per setting:
  claims/s  processes calling store.queue.claim_group(max_batch=1) until the queue is empty;
  runs/s    processes running the engine loop (batches of 4) until the queue is empty.
PostgreSQL is a throwaway local server (tests/pg_server.py; or $MTP_TEST_PG_URL). Ratios
PostgreSQL/SQLite are printed for each setting; absolute numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _queue(store, n_runs: int) -> None:
    from store.queries import save_experiment
    from store.sweep.spec import ExperimentSpec

    seeds = max(1, n_runs // 4)  # groups of 4 runs sharing a source
    spec = ExperimentSpec(
        model="fake",
        num_steps=1,
        width=64,
        height=64,
        seeds=f"0-{seeds - 1}",
        start_step="0",
        final_step="1",
        skip_interval="1-4",
        baseline=False,
    )
    save_experiment(store, "bench", spec, queue=True)


def _engine(home_root: str, url: str | None, mode: str, index: int, barrier, out) -> None:
    from engine.backends.fake import FakeBackend, fake_score
    from engine.worker import Worker, WorkerConfig
    from store import queue as q
    from store.db import Store
    from store.paths import Home

    store = Store(Home.resolve(home_root), url=url)
    name = f"bench:{index}"
    barrier.wait()
    t0 = time.monotonic()
    count = 0
    if mode == "claims":
        while runs := q.claim_group(store, name, max_batch=1):
            count += len(runs)
    else:
        w = Worker(
            store,
            FakeBackend(),
            WorkerConfig(
                device=f"cpu:{index}", once=True, max_batch=4, heartbeat_s=5.0, poll_s=0.05
            ),
            score=fake_score,
            worker_id=name,
        )
        w.run()
        count = w.stats["done"]
    out.put((count, t0, time.monotonic()))
    store.close()


def measure(backend: str, server, n_procs: int, n_runs: int, mode: str) -> float:
    from store.db import Store
    from store.paths import Home

    with tempfile.TemporaryDirectory() as tmp:
        home = Home.resolve(Path(tmp) / "home")
        url = server.new_database() if backend == "postgresql" else None
        try:
            store = Store(home, url=url)
            _queue(store, n_runs)
            store.close()
            ctx = mp.get_context("spawn")
            barrier, out = ctx.Barrier(n_procs), ctx.Queue()
            procs = [
                ctx.Process(target=_engine, args=(str(home.root), url, mode, i, barrier, out))
                for i in range(n_procs)
            ]
            for p in procs:
                p.start()
            results = [out.get(timeout=900) for _ in procs]
            for p in procs:
                p.join(60)
            total = sum(r[0] for r in results)
            assert total == n_runs, f"{total} of {n_runs} runs handled"
            return total / (max(r[2] for r in results) - min(r[1] for r in results))
        finally:
            if url:
                server.drop_database(url)


def export_seconds(backend: str, server, n_runs: int, repeat: int) -> tuple[float, float]:
    from benchmarks.bench_export import populate
    from store.db import Store
    from store.paths import Home
    from store.report.export import export_runs_csv

    with tempfile.TemporaryDirectory() as tmp:
        url = server.new_database() if backend == "postgresql" else None
        try:
            store = Store(Home.resolve(Path(tmp) / "home"), url=url)
            t = time.perf_counter()
            exp_id = populate(store, n_runs)
            insert = time.perf_counter() - t
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                export_runs_csv(store, exp_id, "runs.csv", folder=tmp)
                times.append(time.perf_counter() - t)
            store.close()
            return insert, min(times)
        finally:
            if url:
                server.drop_database(url)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1200)
    ap.add_argument("--procs", default="1,4,16")
    ap.add_argument("--export-runs", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    from tests.pg_server import PgServer

    server = PgServer().start()
    try:
        print(f"{args.runs} queued runs; engine processes: {args.procs}")
        print(f"{'procs':>5} {'mode':>7} {'SQLite/s':>10} {'PostgreSQL/s':>13} {'PG/SQLite':>10}")
        for n in [int(x) for x in args.procs.split(",")]:
            for mode in ("claims", "runs"):
                lite = measure("sqlite", server, n, args.runs, mode)
                pg = measure("postgresql", server, n, args.runs, mode)
                print(f"{n:>5} {mode:>7} {lite:>10.0f} {pg:>13.0f} {pg / lite:>10.2f}", flush=True)
        if args.export_runs:
            print(f"runs-CSV export of {args.export_runs} runs x 5 scores (best of {args.repeat}):")
            for backend in ("sqlite", "postgresql"):
                insert, best = export_seconds(backend, server, args.export_runs, args.repeat)
                print(
                    f"  {backend:10} export {best:.2f} s ({args.export_runs / best:,.0f} rows/s); "
                    f"bulk insert {insert:.1f} s",
                    flush=True,
                )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
