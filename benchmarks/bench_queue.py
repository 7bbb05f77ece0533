"""Queue overhead per run with the torch-free FakeBackend: claim + write + commit, no model.

Prints milliseconds per claim on a deep queue (10k runs) and the engine's bookkeeping cost per
run, so a change to the claim query or the commit path shows up as a ratio, not a feeling.

    .venv/bin/python benchmarks/bench_queue.py [--runs 10000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--claims", type=int, default=50)
    args = ap.parse_args()

    from engine.backends.fake import FakeBackend, fake_score
    from engine.worker import Worker, WorkerConfig
    from store import queue as q
    from store.db import Store
    from store.paths import Home
    from store.queries import save_experiment
    from store.sweep.spec import ExperimentSpec

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Home.resolve(tmp))
        seeds = max(1, args.runs // 100)
        spec = ExperimentSpec(
            model="fake",
            num_steps=100,
            width=64,
            height=64,
            seeds=f"0-{seeds - 1}",
            start_step="0-9",
            final_step="90-99",
            baseline=False,
        )
        t0 = time.perf_counter()
        exp = save_experiment(store, "bench", spec, queue=True)
        print(f"queued {exp.run_count} runs in {time.perf_counter() - t0:.2f}s")

        times = []
        for _ in range(args.claims):
            t = time.perf_counter()
            runs = q.claim_group(store, "bench", max_batch=8, loaded=q.ModelKey("fake"))
            times.append((time.perf_counter() - t) * 1000)
            q.release_runs(store, "bench", [r.id for r in runs])
        print(
            f"claim of 8 on a {exp.run_count}-run queue: median {statistics.median(times):.2f} ms"
        )

        spec = ExperimentSpec(
            model="fake2",
            num_steps=1,
            width=64,
            height=64,
            seeds="0-24",
            start_step="0",
            final_step="1",
            layers="encoder,decoder,all,0-3",
            baseline=False,
        )
        small = save_experiment(store, "small", spec, queue=True)
        q.set_priority(store, small.id, 10)
        worker = Worker(
            store,
            FakeBackend(),
            WorkerConfig(once=True, heartbeat_s=1.0),
            score=fake_score,
            worker_id="bench-worker",
        )
        q.cancel_experiment(store, exp.id)  # drain only the small one
        t = time.perf_counter()
        worker.run()
        per_run = (time.perf_counter() - t) * 1000 / max(1, small.run_count)
        print(
            f"engine bookkeeping (claim, artifacts, scores, commit) per run: {per_run:.2f} ms "
            f"over {small.run_count} runs in {worker.stats['generate_calls']} batches"
        )
        store.close()


if __name__ == "__main__":
    main()
