"""Aggregate and grid planning on a large experiment (issue 10 items 5 and 6).

    .venv/bin/python benchmarks/bench_aggregate.py [--runs 100000]

Prints seconds for ``aggregate`` at scale raw and clipscore (per-metric scaling is a CASE on the
metric in SQL) and the ratio against the raw baseline timed in the same process, plus the time to
plan and draw a pinned grid (which reads every run's axis columns once).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_export import populate  # noqa: E402

from store.db import Store  # noqa: E402
from store.paths import Home  # noqa: E402


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from store.report.aggregate import aggregate
    from store.report.grid_plan import plan_grid

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Home.resolve(Path(tmp) / "home"))
        exp_id = populate(store, args.runs)
        raw = timed(lambda: aggregate(store, exp_id, "final_step"), args.repeat)
        clip = timed(lambda: aggregate(store, exp_id, "final_step", scale="clipscore"), args.repeat)
        by_seed = timed(lambda: aggregate(store, exp_id, "seed"), args.repeat)
        plan = timed(lambda: plan_grid(store, exp_id, "final_step", pins={"seed": 3}), args.repeat)
        store.close()
    print(f"{args.runs} runs x 5 metrics, median of {args.repeat}:")
    print(f"aggregate by final_step raw {raw:.2f} s; clipscore {clip:.2f} s (ratio {clip / raw:.2f})")
    print(f"aggregate by seed (baseline split) {by_seed:.2f} s (ratio {by_seed / raw:.2f} to raw by final_step)")
    print(f"grid plan (all runs read, pinned seed) {plan:.2f} s (ratio {plan / raw:.2f} to raw aggregate)")


if __name__ == "__main__":
    main()
