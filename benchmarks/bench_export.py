"""Time the runs-CSV export of a 100k-run experiment with five scores per run.

    .venv/bin/python benchmarks/bench_export.py [--runs 100000]

Prints the seconds of the export alone (the bulk insert is timed separately) and rows/s.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store.db import Store  # noqa: E402
from store.models import Experiment, Run, Score, utcnow  # noqa: E402
from store.paths import Home  # noqa: E402

METRICS = (("clip_t", "ViT-B-32/openai"), ("clip_i_ref", "ViT-B-32/openai"), ("clip_i_src", "ViT-B-32/openai"),
           ("dino_ref", "facebook/dino-vits16"), ("dino_src", "facebook/dino-vits16"))


def populate(store: Store, n_runs: int, seed: int = 0) -> int:
    """Bulk-insert one experiment of ``n_runs`` done runs, each with every metric scored."""
    rng = random.Random(seed)
    now = utcnow()
    with store.write() as s:
        exp = Experiment(name="bench", run_count=n_runs, status="done")
        s.add(exp)
        s.flush()
        exp_id = exp.id
        finals = (10, 20, 25, 30, 40, 50)
        runs = [dict(experiment_id=exp_id, grid_index=i, seed=i // 60, target_prompt=f"a photo of a dog {i % 10}",
                     prompt_index=i % 10, layers="decoder", start_step=4, final_step=finals[i % 6],
                     status="done", created_at=now, started_at=now, finished_at=now, duration_s=1.5,
                     tags="bench", notes="")
                for i in range(n_runs)]
        s.execute(Run.__table__.insert(), runs)
        first = s.execute(Run.__table__.select().with_only_columns(Run.__table__.c.id)
                          .where(Run.__table__.c.experiment_id == exp_id).order_by(Run.__table__.c.id).limit(1)).scalar()
        scores = [dict(run_id=first + i, metric=m, backbone=b, value=rng.random(), preprocess="",
                       scored_text="a photo of a dog" if m == "clip_t" else None, created_at=now)
                  for i in range(n_runs) for m, b in METRICS]
        s.execute(Score.__table__.insert(), scores)
    return exp_id


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000)
    args = parser.parse_args()
    from store.export import export_runs_csv

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Home.resolve(Path(tmp) / "home"))
        t0 = time.perf_counter()
        exp_id = populate(store, args.runs)
        t1 = time.perf_counter()
        out = export_runs_csv(store, exp_id, Path(tmp) / "runs.csv")
        t2 = time.perf_counter()
        lines = sum(1 for _ in open(out, encoding="utf-8")) - 1
        store.close()
    secs = t2 - t1
    print(f"insert {args.runs} runs + {args.runs * len(METRICS)} scores: {t1 - t0:.2f} s")
    print(f"export runs CSV: {lines} rows in {secs:.2f} s ({lines / secs:,.0f} rows/s)")


if __name__ == "__main__":
    main()
