"""Aggregate and grid planning on a large experiment.

    .venv/bin/python benchmarks/bench_aggregate.py [--runs 100000]

Prints seconds for ``aggregate`` at scale raw and clipscore (per-metric scaling is a CASE on the
metric in SQL) and the ratio against the raw baseline timed in the same process, plus the time to
plan a pinned grid and an unpinned one (which reads every run's axis columns once), and what the
results screen pays for a table and grid kept since the store last changed.
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
    from store.report.memo import cached_aggregate, cached_render_grid

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Home.resolve(Path(tmp) / "home"))
        exp_id = populate(store, args.runs)
        raw = timed(lambda: aggregate(store, exp_id, "final_step"), args.repeat)
        clip = timed(lambda: aggregate(store, exp_id, "final_step", scale="clipscore"), args.repeat)
        by_seed = timed(lambda: aggregate(store, exp_id, "seed"), args.repeat)
        plan = timed(lambda: plan_grid(store, exp_id, "final_step", pins={"seed": 3}), args.repeat)
        plan_all = timed(lambda: plan_grid(store, exp_id, "final_step"), args.repeat)
        # What the results screen pays when nothing changed since the last computation.
        cached_aggregate(store, exp_id, "final_step")
        cached_render_grid(store, exp_id, "final_step")
        kept = timed(
            lambda: (
                cached_aggregate(store, exp_id, "final_step"),
                cached_render_grid(store, exp_id, "final_step"),
            ),
            args.repeat,
        )
        store.close()
    print(f"{args.runs} runs x 5 metrics, median of {args.repeat}:")
    print(
        f"aggregate by final_step raw {raw:.2f} s; clipscore {clip:.2f} s (ratio {clip / raw:.2f})"
    )
    print(
        f"aggregate by seed (baseline split) {by_seed:.2f} s (ratio {by_seed / raw:.2f} to raw by final_step)"
    )
    print(
        f"grid plan (all runs read, pinned seed) {plan:.2f} s (ratio {plan / raw:.2f} to raw aggregate)"
    )
    print(
        f"grid plan (all runs placed, nothing pinned) {plan_all:.2f} s (ratio {plan_all / raw:.2f} to raw aggregate)"
    )
    print(
        f"table + drawn grid kept from the last computation (store unchanged) {kept * 1000:.1f} ms "
        f"(ratio {kept / raw:.3f} to raw aggregate)"
    )


if __name__ == "__main__":
    main()
