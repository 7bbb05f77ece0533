"""Crash and fault survival of real `mtp-engine --backend fake` processes.

1. Random SIGKILLs at any moment (start-up, claim, generation, between artifact write and
   commit) with the DEFAULT attempt limit, then one `--once` engine drains what is left.
   Prints kills survived, runs lost (not done), doubled (committed twice), failed.
2. A full disk and a read-only artifacts folder (the fault hook in engine/artifacts.py): the
   engine pauses, the fault is cleared, and the time from clearing to a drained queue is
   printed next to the same drain without a fault (baseline, same process, same machine).
3. Where a tmpfs can be mounted (root): a real disk filled to the last block, then freed.

    python benchmarks/bench_faults.py [--runs 96] [--kills 30]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp: Path, **extra) -> dict:
    env = dict(os.environ, MTP_ENGINE_BACKEND="fake", MTP_FAKE_STEP_S="0.02", OMP_NUM_THREADS="1")
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env


def _engine(home: Path, env: dict, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "--home",
            str(home),
            "--device",
            "cpu",
            "--poll",
            "0.05",
            "--heartbeat",
            "0.1",
            "--max-batch",
            "4",
            *extra,
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _queue(home: Path, runs: int):
    from store.db import Store
    from store.paths import Home
    from store.queries import save_experiment
    from store.sweep.spec import ExperimentSpec

    store = Store(Home.resolve(home))
    for seed in range(max(1, runs // 8)):
        save_experiment(
            store,
            f"e{seed}",
            ExperimentSpec(
                model="fake",
                source_prompt="a dog",
                target_prompts=["a dog on the beach"],
                num_steps=4,
                width=64,
                height=64,
                seeds=str(seed),
                layers="decoder",
                start_step="0,1",
                final_step="2,3",
                skip_interval="1,2",
                baseline=False,
            ),
            queue=True,
        )
    return store


def _runs(store):
    from sqlmodel import select

    from store.models import Run

    with store.session() as s:
        return list(s.exec(select(Run)))


def _wait(pred, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.02)


def kills(runs: int, n_kills: int, seed: int) -> None:
    from engine.launch import log_path
    from store.models import RunStatus

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = _queue(tmp / "home", runs)
        rng = random.Random(seed)
        killed = self_killed = 0
        for i in range(n_kills):
            # Every third life also dies between writing a run's files and committing it.
            extra = {"MTP_FAULT": "kill-after-write:0.2"} if i % 3 == 2 else {}
            proc = _engine(tmp / "home", _env(tmp, **extra))
            time.sleep(rng.uniform(0.05, 2.0))
            if proc.poll() is None:
                proc.kill()
                killed += 1
            elif proc.returncode == -signal.SIGKILL:
                self_killed += 1
            proc.wait()
        done_before = sum(r.status == RunStatus.DONE for r in _runs(store))
        t0 = time.monotonic()
        last = _engine(tmp / "home", _env(tmp), "--once")
        last.wait()
        rows = _runs(store)
        commits = collections.Counter(
            int(m) for m in re.findall(r"run (\d+) done", log_path(store.home, "cpu").read_text())
        )
        lost = [r.id for r in rows if r.status != RunStatus.DONE]
        doubled = [rid for rid, n in commits.items() if n > 1]
        failed = [r for r in rows if r.status == RunStatus.FAILED]
        print(
            f"random SIGKILLs (default --max-attempts): {killed} kills + {self_killed} kills between write and "
            f"commit survived; {done_before}/{len(rows)} done before the final drain, which took "
            f"{time.monotonic() - t0:.1f}s (exit {last.returncode})"
        )
        print(
            f"  runs lost {len(lost)}, doubled {len(doubled)}, failed {len(failed)}; "
            f"runs charged with an in-flight death: {sum(r.crashes > 0 for r in rows)}, "
            f"most deaths charged to one run: {max(r.crashes for r in rows)}"
        )
        store.close()


def fault(kind: str, runs: int, hold_s: float) -> None:
    from store import queue as q
    from store.models import RunStatus

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # Baseline: the same queue drained by the same kind of engine without a fault.
        base = _queue(tmp / "base", runs)
        proc = _engine(tmp / "base", _env(tmp))
        _wait(lambda: any(w.status == q.WorkerStatus.IDLE for w in q.list_workers(base)))
        t0 = time.monotonic()
        _wait(lambda: all(r.status == RunStatus.DONE for r in _runs(base)))
        baseline = time.monotonic() - t0
        proc.terminate()
        proc.wait()
        base.close()

        store = _queue(tmp / "home", runs)
        flag = tmp / "fault"
        flag.touch()
        proc = _engine(tmp / "home", _env(tmp, MTP_FAULT=f"{kind}:{flag}"))
        _wait(lambda: any(w.status == q.WorkerStatus.PAUSED for w in q.list_workers(store)))
        time.sleep(hold_s)
        held = [r.status for r in _runs(store)]
        flag.unlink()
        t0 = time.monotonic()
        _wait(lambda: any(r.status != RunStatus.QUEUED for r in _runs(store)))
        resumed = time.monotonic() - t0
        _wait(lambda: all(r.status == RunStatus.DONE for r in _runs(store)))
        drained = time.monotonic() - t0
        proc.terminate()
        proc.wait()
        print(
            f"{kind}: paused {hold_s:.0f}s with {held.count(RunStatus.QUEUED)}/{len(held)} runs queued, "
            f"{held.count(RunStatus.RUNNING)} running, {held.count(RunStatus.FAILED)} failed; after clearing: "
            f"resumed in {resumed:.2f}s, drained {runs} runs in {drained:.2f}s "
            f"(baseline drain {baseline:.2f}s, ratio {drained / baseline:.2f})"
        )
        store.close()


def real_full_disk(runs: int, hold_s: float) -> None:
    """A real 8 MiB tmpfs filled to the last block (needs root and mount)."""
    from store import queue as q
    from store.models import RunStatus

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        disk = tmp / "disk"
        disk.mkdir()
        if (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(disk)], capture_output=True
            ).returncode
            != 0
        ):
            print("real full disk: skipped (cannot mount a tmpfs here)")
            return
        try:
            store = _queue(disk / "home", runs)
            proc = _engine(disk / "home", _env(tmp, MTP_FAKE_STEP_S="0.05"))
            _wait(lambda: any(r.status == RunStatus.DONE for r in _runs(store)))
            with open(disk / "filler", "wb") as fh:
                try:
                    while True:
                        fh.write(b"\0" * 65536)
                        fh.flush()
                except OSError:
                    pass
            t_fill = time.monotonic()
            _wait(lambda: any(w.status == q.WorkerStatus.PAUSED for w in q.list_workers(store)))
            noticed = time.monotonic() - t_fill
            time.sleep(hold_s)
            rows = _runs(store)
            held = collections.Counter(r.status for r in rows)
            (disk / "filler").unlink()
            t0 = time.monotonic()
            _wait(lambda: all(r.status == RunStatus.DONE for r in _runs(store)))
            drained = time.monotonic() - t0
            proc.terminate()
            proc.wait()
            print(
                f"real full disk (tmpfs): paused {noticed:.2f}s after the disk filled, held {hold_s:.0f}s with "
                f"{dict(held)}; after freeing space the rest drained in {drained:.2f}s "
                f"(all {len(rows)} done: {all(r.status == RunStatus.DONE for r in _runs(store))})"
            )
            store.close()
        finally:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=96)
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hold", type=float, default=5.0, help="seconds the fault lasts")
    args = ap.parse_args()
    kills(args.runs, args.kills, args.seed)
    for kind in ("enospc", "erofs"):
        fault(kind, args.runs, args.hold)
    real_full_disk(args.runs, args.hold)


if __name__ == "__main__":
    main()
