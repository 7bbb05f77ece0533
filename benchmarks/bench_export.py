"""Time the runs-CSV export of a 100k-run experiment with five scores per run.

    .venv/bin/python benchmarks/bench_export.py [--runs 100000]

Prints the seconds of each export alone (the bulk insert is timed separately), best and median rows/s.
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import select  # noqa: E402

from store.db import Store  # noqa: E402
from store.models import Experiment, Run, Score, utcnow  # noqa: E402
from store.paths import Home  # noqa: E402

METRICS = (
    ("clip_t", "ViT-B-32/openai"),
    ("clip_i_ref", "ViT-B-32/openai"),
    ("clip_i_src", "ViT-B-32/openai"),
    ("dino_ref", "facebook/dino-vits16"),
    ("dino_src", "facebook/dino-vits16"),
)


def populate(store: Store, n_runs: int, seed: int = 0) -> int:
    """Bulk-insert one experiment of ``n_runs`` done runs, each with every metric scored.

    Core executemany of column dicts, as store.queries inserts sweeps.
    """
    rng = random.Random(seed)
    now = utcnow()
    finals = (10, 20, 25, 30, 40, 50)
    with store.write() as s:
        exp = Experiment(name="bench", run_count=n_runs, status="done")
        s.add(exp)
        s.flush()
        exp_id = exp.id
        run_t, score_t = Run.__table__, Score.__table__
        for lo in range(0, n_runs, 20_000):
            s.execute(
                run_t.insert(),
                [
                    dict(
                        experiment_id=exp_id,
                        grid_index=i,
                        seed=i // 60,
                        target_prompt=f"a photo of a dog {i % 10}",
                        prompt_index=i % 10,
                        layers="decoder",
                        start_step=4,
                        final_step=finals[i % 6],
                        status="done",
                        created_at=now,
                        started_at=now,
                        finished_at=now,
                        duration_s=1.5,
                        tags="bench",
                        notes="",
                    )
                    for i in range(lo, min(n_runs, lo + 20_000))
                ],
            )
        ids = [
            r[0]
            for r in s.execute(
                select(run_t.c.id).where(run_t.c.experiment_id == exp_id).order_by(run_t.c.id)
            )
        ]
        for lo in range(0, len(ids), 4_000):
            s.execute(
                score_t.insert(),
                [
                    dict(
                        run_id=run_id,
                        metric=m,
                        backbone=b,
                        value=rng.random(),
                        preprocess="",
                        scored_text="a photo of a dog" if m == "clip_t" else None,
                        created_at=now,
                    )
                    for run_id in ids[lo : lo + 4_000]
                    for m, b in METRICS
                ],
            )
    return exp_id


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument(
        "--repeat", type=int, default=3, help="exports timed (the machine may be shared)"
    )
    args = parser.parse_args()
    from store.report.export import export_runs_csv

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Home.resolve(Path(tmp) / "home"))
        t0 = time.perf_counter()
        exp_id = populate(store, args.runs)
        t1 = time.perf_counter()
        times, cpu = [], []
        for _ in range(args.repeat):
            t, c = time.perf_counter(), time.process_time()
            out = export_runs_csv(store, exp_id, "runs.csv", folder=tmp)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        with open(out, encoding="utf-8", newline="") as fh:
            lines = sum(1 for _ in csv.reader(fh)) - 1
        # Baseline in the same process: the export without its scan for control characters
        # (store.safe_text on each formatted chunk), to state what showing user text safe costs.
        import store.report.export as export_module

        scan = export_module.is_safe
        export_module.is_safe = lambda *_a, **_k: True
        try:
            plain_times, plain_cpu = [], []
            for _ in range(args.repeat):
                t, c = time.perf_counter(), time.process_time()
                export_runs_csv(store, exp_id, "runs.csv", folder=tmp)
                plain_times.append(time.perf_counter() - t)
                plain_cpu.append(time.process_time() - c)
        finally:
            export_module.is_safe = scan
        store.close()
    print(f"insert {args.runs} runs + {args.runs * len(METRICS)} scores: {t1 - t0:.2f} s")
    print(
        "export runs CSV: "
        + ", ".join(f"{t:.2f}" for t in times)
        + " s wall; "
        + ", ".join(f"{c:.2f}" for c in cpu)
        + " s CPU"
    )
    best, median = min(times), statistics.median(times)
    print(
        f"{lines} rows: best {best:.2f} s ({lines / best:,.0f} rows/s), median {median:.2f} s "
        f"({lines / median:,.0f} rows/s)"
    )
    print(
        f"control-character scan: best {best:.2f} s wall, {min(cpu):.2f} s CPU; without it "
        f"{min(plain_times):.2f} s wall, {min(plain_cpu):.2f} s CPU "
        f"(ratio {best / min(plain_times):.3f} wall, {min(cpu) / min(plain_cpu):.3f} CPU)"
    )


if __name__ == "__main__":
    main()
