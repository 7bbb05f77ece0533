"""mtp-tui responsiveness on a big database (a script that prints figures, not a test).

    .venv/bin/python benchmarks/bench_tui.py [--runs 100000] [--home /tmp/bench-tui]

1. cold start: a fresh process imports the app, opens the store and shows Home with its data
   (goal <= 1.0 s);
2. runs browser: filter / sort (incl. by a score) / page latencies on N runs, both the SQL call
   alone and the screen round trip (request -> worker -> table filled) (goal <= 0.3 s);
3. every screen's open time (key -> data shown -> painted);
all printed next to the floor measured in the same run: a plain Textual DataTable filled with
50 rows x 16 columns and painted, the same way (goals: runs screen <= 1.5x that baseline, any
screen <= 0.3 s, cold start <= 1.0 s).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(home: Path, n_runs: int):
    """One experiment of n_runs runs (seeds x final steps), half of them done and scored."""
    from sqlalchemy import func, select

    from store.db import Store
    from store.models import Run, Score
    from store.paths import Home
    from store.queries import save_experiment
    from store.sweep.spec import ExperimentSpec

    store = Store(Home.resolve(home))
    with store.session() as s:
        have = s.execute(select(func.count()).select_from(Run)).scalar_one()
    if have >= n_runs:
        return store
    model = store.home.models / "bench-sd"
    model.mkdir(parents=True, exist_ok=True)
    seeds = n_runs // 10
    spec = ExperimentSpec(
        model=str(model),
        num_steps=50,
        seeds=f"0-{seeds - 1}",
        layers="decoder",
        start_step="4",
        final_step="10,15,20,25,30,35,40,45,end",
        target_prompts=["a photo of a dog on the beach"],
    )
    t = time.perf_counter()
    exp = save_experiment(store, "bench", spec, queue=True)
    print(f"  built {exp.run_count} runs in {time.perf_counter() - t:.1f}s", flush=True)
    t = time.perf_counter()
    with store.write() as s:
        ids = [r for (r,) in s.execute(select(Run.id).where(Run.id % 2 == 0))]
        s.execute(
            Run.__table__.update().where(Run.id % 2 == 0).values(status="done", duration_s=3.0)
        )
        rows = []
        for rid in ids:
            rows.append(
                {
                    "run_id": rid,
                    "metric": "clip_t",
                    "backbone": "ViT-B-32/openai",
                    "value": (rid % 97) / 300,
                }
            )
            rows.append(
                {
                    "run_id": rid,
                    "metric": "clip_i_ref",
                    "backbone": "ViT-B-32/openai",
                    "value": 0.6 + (rid % 89) / 300,
                }
            )
        s.execute(Score.__table__.insert(), rows)
    print(f"  scored {len(ids)} runs in {time.perf_counter() - t:.1f}s", flush=True)
    return store


COLD = r"""
import sys, time, asyncio
t0 = float(sys.argv[1])
from store.entrypoint import apply_rule
from tui.app import MtpApp, open_store
from tui.widgets import artifact_image  # as main() does, before the app starts
store = open_store(apply_rule(sys.argv[2], None, False))
marks = {}
async def main():
    app = MtpApp(store)
    async with app.run_test(size=(120, 40)) as pilot:
        while True:
            screen = app.screen
            if type(screen).__name__ == "HomeScreen" and screen.query("#experiments") \
                    and screen.query_one("#experiments").row_count:
                break
            await asyncio.sleep(0.002)
        marks["data"] = time.time()
        await pilot.pause()
        marks["painted"] = time.time()
asyncio.run(main())
print(f"{marks['data'] - t0:.3f} {marks['painted'] - t0:.3f}")
"""


def cold_start(home: Path, repeats: int = 3) -> list[tuple[float, float]]:
    out = []
    for _ in range(repeats):
        t0 = time.time()
        res = subprocess.run(
            [sys.executable, "-c", COLD, str(t0), str(home)],
            capture_output=True,
            text=True,
            cwd=str(ROOT),
            timeout=120,
        )
        if res.returncode:
            raise SystemExit(res.stderr[-2000:])
        data, painted = map(float, res.stdout.split()[-2:])
        out.append((data, painted))
    return out


CASES = [
    ("first page", "", "id", False, 0),
    ("sort by final_step desc", "", "final_step", True, 0),
    ("sort by score clip_t", "", "score:clip_t", True, 0),
    ("filter status=done", "status=done", "id", False, 0),
    ("filter seed=4321", "seed=4321", "id", False, 0),
    ("filter final_step=20 + text", "final_step=20 beach", "id", False, 0),
    ("page at offset 50000", "", "id", False, 50_000),
    ("deep page sorted by score", "", "score:clip_t", True, 40_000),
]


def sql_latency(store) -> list[tuple[str, float]]:
    from store.queries import list_runs, run_scores
    from tui.screens.runs import PAGE, parse_filter

    out = []
    for label, text, sort, desc, offset in CASES:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            runs, _total = list_runs(
                store, parse_filter(text), sort=sort, descending=desc, offset=offset, limit=PAGE
            )
            run_scores(store, [r.id for r in runs])
            times.append(time.perf_counter() - t)
        out.append((label, statistics.median(times)))
    return out


async def screen_latency(store, repeats: int = 3) -> list[tuple[str, float]]:
    """Each case's round trip, median of `repeats` passes over all the cases."""
    from tui.app import MtpApp
    from tui.screens.runs import RunsScreen

    got = {}

    def hook(message):
        if isinstance(message, RunsScreen.Page):
            got["t"] = time.perf_counter()

    app = MtpApp(store)
    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        app.push_screen(RunsScreen())
        while not (isinstance(app.screen, RunsScreen) and app.screen.loaded):
            await asyncio.sleep(0.01)
        await (
            pilot.pause()
        )  # the screen's first paint belongs to "screen open", not to the first case
        screen = app.screen
        times: dict[str, list[float]] = {label: [] for label, *_ in CASES}
        for label, text, sort, desc, offset in CASES * repeats:
            screen.filter_text, screen.sort, screen.descending, screen.page_offset = (
                text,
                sort,
                desc,
                offset,
            )
            got.clear()
            t = time.perf_counter()
            token = screen._token + 1
            screen.reload()
            while not got or screen._token != token:
                await asyncio.sleep(0.002)
            await pilot.pause()  # the table filled and painted
            times[label].append(time.perf_counter() - t)
    return [(label, statistics.median(v)) for label, v in times.items()]


async def baseline_latency(repeats: int = 7) -> float:
    """The floor: a bare App whose DataTable gets 50 rows x 16 columns and is painted."""
    from rich.text import Text
    from textual.app import App
    from textual.widgets import DataTable

    class Plain(App):
        def compose(self):
            yield DataTable()

    rows = [[Text(f"cell {r}-{c}", no_wrap=True) for c in range(16)] for r in range(50)]
    times = []
    app = Plain()
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(DataTable)
        table.add_columns(*[f"col{c}" for c in range(16)])
        await pilot.pause()
        for _ in range(repeats):
            t = time.perf_counter()
            table.clear()
            table.add_rows(rows)
            await pilot.pause()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


async def screen_open_latency(
    store, repeats: int = 4, idle_wait: bool = True
) -> list[tuple[str, float, float]]:
    """Key press -> the screen's data shown -> painted, for each screen: the first open and the
    median of the `repeats - 1` opens after it (the runs screen is kept once built, so only its
    first open builds it).

    ``idle_wait``: press the key with ``pilot.press``, which also waits (up to 2 x 1 s) for the
    whole process to go idle, so background work after the data is shown (the results screen's
    image grid) is counted too. Without it the key is sent alone and the figure is what a user
    sees: key -> data painted."""
    from sqlalchemy import select
    from textual import events

    from store.models import Experiment
    from tui.app import MtpApp

    with store.session() as s:
        exp_id = s.execute(select(Experiment.id).limit(1)).scalar_one()

    def ready(app, name):
        screen = app.screen
        if type(screen).__name__ != name:
            return False
        return {
            "RunsScreen": lambda: screen.loaded,
            "SweepScreen": lambda: screen._ready,
            "ResultsScreen": lambda: bool(screen.rows),
            "ConceptScreen": lambda: True,
            "RunDetailScreen": lambda: screen.bundle is not None,
            "HomeScreen": lambda: screen.query_one("#experiments").row_count > 0,
        }[name]()

    # (label, key, screen, (key, screen) to be on first, untimed)
    cases = [
        ("runs (f6)", "f6", "RunsScreen", None),
        ("sweep builder (f4)", "f4", "SweepScreen", None),
        ("results (f7)", "f7", "ResultsScreen", None),
        ("concept (f3)", "f3", "ConceptScreen", None),
        ("run detail (enter on runs)", "enter", "RunDetailScreen", ("f6", "RunsScreen")),
        ("home (f2, from runs)", "f2", "HomeScreen", ("f6", "RunsScreen")),
    ]
    times: dict[str, list[float]] = {label: [] for label, *_ in cases}
    app = MtpApp(store)
    app.experiment_id = exp_id
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        for _ in range(repeats):
            for label, key, name, before in cases:
                if before:  # e.g. Home from another screen, or the key would do nothing
                    await pilot.press(before[0])
                    while not ready(app, before[1]):
                        await asyncio.sleep(0.002)
                    await pilot.pause(0.2)
                t = time.perf_counter()
                if idle_wait:
                    await pilot.press(key)
                else:
                    app._driver.send_message(events.Key(key, None))
                while not ready(app, name):
                    await asyncio.sleep(0.002)
                if idle_wait:
                    await pilot.pause()
                else:  # pilot.pause would wait for idle too: wait for the screen's next paint only
                    painted = asyncio.Event()
                    app.screen.call_after_refresh(painted.set)
                    await painted.wait()
                times[label].append(time.perf_counter() - t)
                await pilot.press("f2")
                await pilot.pause(0.2)
    return [(label, v[0], statistics.median(v[1:])) for label, v in times.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "bench-tui"))
    args = ap.parse_args()
    home = Path(args.home)
    print(f"database: {home} ({args.runs} runs)")
    store = build(home, args.runs)

    base = asyncio.run(baseline_latency())
    print(
        f"baseline: plain DataTable, 50 rows x 16 columns filled and painted: {base * 1000:.1f} ms"
    )

    print("cold start (process start -> Home data in / painted), goal <= 1.0 s:")
    for data, painted in cold_start(home):
        print(f"  {data:.3f} s / {painted:.3f} s   ({painted / base:.1f}x baseline)")

    print("runs browser, SQL page (list_runs + scores), goal <= 0.3 s:")
    for label, secs in sql_latency(store):
        print(f"  {label:32s} {secs * 1000:7.1f} ms")
    print(
        "runs browser, screen round trip (reload -> worker -> table painted), goal <= 1.5x baseline:"
    )
    for label, secs in asyncio.run(screen_latency(store)):
        print(f"  {label:32s} {secs * 1000:7.1f} ms  {secs / base:5.2f}x baseline")
    print(
        "screen open (key -> data shown -> painted), goal <= 0.3 s; first open / median of the next 3:"
    )
    print("  (pilot.press: also waits for the process to go idle, background work included)")
    for label, first, again in asyncio.run(screen_open_latency(store)):
        print(
            f"  {label:28s} {first * 1000:7.1f} ms ({first / base:5.2f}x) / {again * 1000:7.1f} ms"
            f" ({again / base:5.2f}x baseline)"
        )
    print("  (key sent alone: what a user sees, key -> data painted)")
    for label, first, again in asyncio.run(screen_open_latency(store, idle_wait=False)):
        print(
            f"  {label:28s} {first * 1000:7.1f} ms ({first / base:5.2f}x) / {again * 1000:7.1f} ms"
            f" ({again / base:5.2f}x baseline)"
        )
    print(
        f"baseline again (same process, after the rest): {asyncio.run(baseline_latency()) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
