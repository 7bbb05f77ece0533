"""The leaderboard of a large study, next to today's aggregate over the same runs.

    .venv/bin/python benchmarks/bench_leaderboard.py [--runs 100000]

Builds a study of 200 units (5 prompts each) x 5 seeds x 20 configurations (100,000 runs, three
scores each) on SQLite, timing `create_study` itself, then prints: seconds for `build_leaderboard` (SQL, unit means, 2000
bootstrap resamples and a Wilcoxon test per configuration and metric); seconds for `aggregate`
over the same runs (one call per unit experiment, as the results screen would need); and the
Leaderboard screen's key -> first paint and key -> table filled, each as a ratio to the plain
DataTable floor of `bench_tui.py` measured in the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_tui import baseline_latency  # noqa: E402

from store.db import Store  # noqa: E402
from store.paths import Home  # noqa: E402


def populate(store: Store, runs: int) -> int:
    import numpy as np
    from sqlalchemy import select

    from store.models import Experiment, Run, Score
    from store.studies.create import create_study
    from store.studies.suites import store_suite
    from store.suites import ParsedSuite, ParsedUnit
    from store.sweep.spec import ExperimentSpec

    per_unit = 5 * 5 * 20
    n_units = max(1, runs // per_unit)
    units = tuple(
        ParsedUnit(
            name=f"set-{i}",
            group=f"class-{i % 8}",
            subject_prompt=f"a photo of a dog {i}",
            prompts=tuple(f"a photo of a dog {i} scene {k}" for k in range(5)),
            subject_words=("dog",),
        )
        for i in range(n_units)
    )
    store_suite(
        store,
        ParsedSuite(layout="consistory", name="big", units=units, prompt_rule="", source=Path(".")),
    )
    finals = ",".join(str(f) for f in range(31, 50)) + ",end"
    spec = ExperimentSpec(model="tiny", seeds="0-4", start_step="4", final_step=finals)
    t = time.perf_counter()
    study, total = create_study(store, "big", "big", spec, queue=True)
    print(
        f"mtp study create (expand + write every unit, one transaction): {time.perf_counter() - t:.2f} s"
    )
    rng = np.random.default_rng(0)
    with store.write() as s:
        ids = [
            r
            for (r,) in s.execute(
                select(Run.id).join(Experiment).where(Experiment.study_id == study.id)
            )
        ]
        s.execute(Run.__table__.update().values(status="done"))
        for metric in ("clip_t", "clip_i_set", "dreamsim_set"):
            vals = rng.random(len(ids))
            s.execute(
                Score.__table__.insert(),
                [
                    {"run_id": i, "metric": metric, "backbone": "bb", "value": float(v)}
                    for i, v in zip(ids, vals)
                ],
            )
    print(f"study: {n_units} units, {total} runs, {3 * total} scores")
    return study.id


def timed(fn, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


async def screen_times(store, repeats: int = 4) -> tuple[float, float, float]:
    """Key -> first paint of the Leaderboard screen, and key -> its table filled and painted."""
    from textual import events

    from tui.app import MtpApp
    from tui.screens.leaderboard import LeaderboardScreen

    first, filled = [], []
    app = MtpApp(store)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        for _ in range(repeats):
            t = time.perf_counter()
            app._driver.send_message(events.Key("f9", None))
            while not isinstance(app.screen, LeaderboardScreen):
                await asyncio.sleep(0.002)
            painted = asyncio.Event()
            app.screen.call_after_refresh(painted.set)
            await painted.wait()
            first.append(time.perf_counter() - t)
            while app.screen.board is None:
                await asyncio.sleep(0.002)
            painted = asyncio.Event()
            app.screen.call_after_refresh(painted.set)
            await painted.wait()
            filled.append(time.perf_counter() - t)
            await pilot.press("f2")
            await pilot.pause(0.2)
    # the first open computes the table; later ones reuse it while nothing changed (memo)
    return statistics.median(first), filled[0], statistics.median(filled[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from store.report.aggregate import aggregate
    from store.report.leaderboard import build_leaderboard
    from store.studies.create import study_experiments

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Home.resolve(Path(tmp) / "home"))
        study_id = populate(store, args.runs)
        board = timed(lambda: build_leaderboard(store, study_id), args.repeat)
        exps = [e.id for e in study_experiments(store, study_id)]
        agg = timed(lambda: [aggregate(store, e, "final_step") for e in exps], 1)
        print(f"leaderboard (goal <= 2 s):                  {board:7.3f} s")
        print(f"aggregate over the same runs, per unit:     {agg:7.3f} s  ({board / agg:.2f}x)")
        base = asyncio.run(baseline_latency())
        first, filled, again = asyncio.run(screen_times(store))
        print(f"plain DataTable floor (bench_tui):          {base * 1000:7.1f} ms")
        print(
            f"Leaderboard screen, key -> first paint:     {first * 1000:7.1f} ms"
            f"  ({first / base:.2f}x floor, goal <= 2x)"
        )
        print(
            f"Leaderboard screen, key -> table filled:    {filled * 1000:7.1f} ms first open, "
            f"{again * 1000:.1f} ms reopened ({again / base:.2f}x floor)"
        )


if __name__ == "__main__":
    main()
