"""Sweep builder (F4) open latency alone, the way bench_tui.screen_open_latency measures it, with
CPU time next to wall time (the machines are shared) and the plain-DataTable baseline from the
same process (a script that prints figures, not a test).

    .venv/bin/python benchmarks/bench_sweep_open.py [--home /tmp/bench-tui] [--repeats 7] [--size 120x40]

`--profile out.prof` writes a cProfile of the opens (key-alone variant) for pstats.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


async def opens(
    store, repeats: int, idle_wait: bool, size, prof=None
) -> tuple[list[float], list[float]]:
    from textual import events

    from tui.app import MtpApp

    wall, cpu = [], []
    app = MtpApp(store)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        for _ in range(repeats):
            if prof:
                prof.enable()
            t, c = time.perf_counter(), time.process_time()
            if idle_wait:
                await pilot.press("f4")
            else:
                app._driver.send_message(events.Key("f4", None))
            while not (type(app.screen).__name__ == "SweepScreen" and app.screen._ready):
                await asyncio.sleep(0.002)
            if idle_wait:
                await pilot.pause()
            else:
                painted = asyncio.Event()
                app.screen.call_after_refresh(painted.set)
                await painted.wait()
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            if prof:
                prof.disable()
            await pilot.press("f2")
            await pilot.pause(0.2)
    return wall, cpu


def main() -> None:
    import bench_tui

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "bench-tui"))
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--size", default="120x40")
    ap.add_argument("--profile")
    args = ap.parse_args()
    store = bench_tui.build(Path(args.home), args.runs)
    size = tuple(int(x) for x in args.size.split("x"))
    base = asyncio.run(bench_tui.baseline_latency())
    print(
        f"baseline: plain DataTable, 50 rows x 16 columns filled and painted: {base * 1000:.1f} ms"
    )
    prof = cProfile.Profile() if args.profile else None
    for idle_wait in (True, False):
        wall, cpu = asyncio.run(
            opens(store, args.repeats, idle_wait, size, None if idle_wait else prof)
        )
        label = "pilot.press, until idle" if idle_wait else "key sent alone, to the paint"
        print(
            f"sweep builder (f4) {args.size}, {label}: wall median {statistics.median(wall) * 1000:.0f} ms "
            f"(min {min(wall) * 1000:.0f}, {statistics.median(wall) / base:.2f}x baseline), "
            f"CPU median {statistics.median(cpu) * 1000:.0f} ms (min {min(cpu) * 1000:.0f})"
        )
    if prof:
        prof.dump_stats(args.profile)


if __name__ == "__main__":
    main()
