"""Engines as real processes: SIGKILL mid-batch and restart, two engines on one database,
detached start surviving SIGHUP of its parent, the per-device lock."""
from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import select

from engine.launch import EngineAlreadyRunning, engine_running, log_path, start_engine, stop_engine
from store import queue as q
from store.models import Run, RunStatus, Score
from store.queries import save_experiment
from store.sweep import ExperimentSpec

ROOT = Path(__file__).resolve().parents[2]


def make_exp(store, name="exp", model="fake-model", **kw):
    base = dict(model=model, source_prompt="a photo of a dog", target_prompts=["a dog on the beach"],
                num_steps=4, width=64, height=64, seeds="0", layers="decoder", start_step="0,1",
                final_step="2,3", skip_interval="1,2", baseline=False)
    base.update(kw)
    return save_experiment(store, name, ExperimentSpec(**base), queue=True)


def runs_of(store) -> list[Run]:
    with store.session() as s:
        return list(s.exec(select(Run).order_by(Run.id)))


def fake_env(tmp_path, step_s: float) -> dict:
    env = dict(os.environ, MTP_ENGINE_BACKEND="fake", MTP_FAKE_STEP_S=str(step_s),
               MTP_FAKE_LOG=str(tmp_path / "generate.log"), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def engine(home, env, device="cpu", *extra) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "engine.cli", "--home", str(home.root), "--device", device, "--poll", "0.05",
           "--heartbeat", "0.1", *extra]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(pred, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.03)


def done_counts(home, device="cpu") -> collections.Counter:
    text = log_path(home, device).read_text() if log_path(home, device).exists() else ""
    return collections.Counter(int(m) for m in re.findall(r"run (\d+) done", text))


def assert_all_done_once(store, runs_expected: int, devices=("cpu",)) -> list[Run]:
    runs = runs_of(store)
    assert len(runs) == runs_expected
    assert [r.id for r in runs if r.status != RunStatus.DONE] == []
    committed = collections.Counter()
    for d in devices:
        committed += done_counts(store.home, d)
    assert set(committed) == {r.id for r in runs} and max(committed.values()) == 1, committed
    with store.session() as s:
        per_run = collections.Counter(sc.run_id for sc in s.exec(select(Score)))
    assert all(per_run[r.id] == 1 for r in runs)
    for r in runs:
        for rel in (r.image_path, r.source_image_path):
            assert (store.home.root / rel).is_file()
    return runs


def test_sigkill_mid_batch_and_restart_repeatedly(store, tmp_path):
    for seed in range(3):
        make_exp(store, f"e{seed}", seeds=str(seed))  # 3 groups x 8 runs
    env = fake_env(tmp_path, step_s=0.1)
    kills = 0
    for _ in range(4):
        before = sum(r.status == RunStatus.DONE for r in runs_of(store))
        proc = engine(store.home, env, "cpu", "--max-batch", "4", "--max-attempts", "10")
        try:
            # Let it commit one batch (so each life makes progress), then kill it inside the next.
            wait_for(lambda: sum(r.status == RunStatus.DONE for r in runs_of(store)) > before
                     or proc.poll() is not None, what="a committed batch")
            if proc.poll() is not None:
                break
            wait_for(lambda: any(r.status == RunStatus.RUNNING for r in runs_of(store)) or proc.poll() is not None,
                     what="a claimed batch")
            time.sleep(0.15)  # inside the 0.4 s of denoising
        finally:
            if proc.poll() is None:
                proc.kill()
                kills += 1
            proc.wait()  # reaped, so its pid is gone for the next engine's recovery
    assert kills >= 3
    assert any(r.status == RunStatus.RUNNING for r in runs_of(store))  # the last kill left a claim behind
    proc = engine(store.home, env, "cpu", "--once", "--max-batch", "4")
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    runs = assert_all_done_once(store, 24)
    assert max(r.attempts for r in runs) >= 2  # killed batches really were rerun
    assert "database is locked" not in log_path(store.home, "cpu").read_text()


def test_two_engine_processes_share_sixty_runs(store, tmp_path):
    for seed in range(8):
        make_exp(store, f"e{seed}", seeds=str(seed))  # 64 runs in 8 groups
    env = fake_env(tmp_path, step_s=0.04)
    procs = [engine(store.home, env, dev, "--once", "--max-batch", "4") for dev in ("cpu", "cpu:1")]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    assert_all_done_once(store, 64, devices=("cpu", "cpu:1"))
    lines = (tmp_path / "generate.log").read_text().splitlines()
    generated = [int(i) for line in lines for i in line.split("\t")[2].split(",")]
    assert sorted(generated) == [r.id for r in runs_of(store)]  # each generated exactly once
    assert len({line.split("\t")[0] for line in lines}) == 2  # both engines worked
    for dev in ("cpu", "cpu:1"):
        assert "database is locked" not in log_path(store.home, dev).read_text()


def test_two_engine_processes_on_the_real_tiny_model(store, tiny_model_dir, tmp_path):
    make_exp(store, "a", model=str(tiny_model_dir), num_steps=3, seeds="0,1", start_step="0",
             final_step="2", skip_interval="1", baseline=True)  # 4 runs in 2 groups
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("MTP_ENGINE_BACKEND", None)
    env["PYTHONPATH"] = str(ROOT)
    procs = [engine(store.home, env, dev, "--once", "--no-score") for dev in ("cpu", "cpu:1")]
    for p in procs:
        _out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()[-3000:]
    runs = runs_of(store)
    assert {r.status for r in runs} == {RunStatus.DONE}, [r.error for r in runs]
    committed = done_counts(store.home, "cpu") + done_counts(store.home, "cpu:1")
    assert sorted(committed) == [r.id for r in runs] and set(committed.values()) == {1}


def test_detached_engine_survives_sighup_of_its_parent(store, tmp_path):
    env = fake_env(tmp_path, step_s=0.01)
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from engine.launch import start_engine\n"
         "print(start_engine(sys.argv[1], device='cpu', extra_args=['--poll', '0.05', '--heartbeat', '0.1']), flush=True)\n"
         "time.sleep(120)\n",
         str(store.home.root)],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True,
    )
    try:
        pid = int(parent.stdout.readline())
        # The terminal goes away: its whole process group gets SIGHUP.
        os.killpg(parent.pid, signal.SIGHUP)
        parent.wait(timeout=10)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    try:
        assert [e["pid"] for e in engine_running(store.home)] == [pid]
        with pytest.raises(EngineAlreadyRunning):
            start_engine(store.home, device="cpu")
        second = subprocess.run([sys.executable, "-m", "engine.cli", "--home", str(store.home.root), "--device", "cpu"],
                                env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert second.returncode == 3 and "already running on cpu" in second.stderr

        make_exp(store)  # queued after the parent is gone: the engine still drains it
        wait_for(lambda: {r.status for r in runs_of(store)} == {RunStatus.DONE}, what="the queue to drain")
        wait_for(lambda: any(w.pid == pid and w.status == q.WorkerStatus.IDLE for w in q.list_workers(store)),
                 what="the engine to report idle")
    finally:
        assert stop_engine(store.home, wait_s=20) == [pid]
    assert engine_running(store.home) == []
    assert any(w.pid == pid and w.status == q.WorkerStatus.STOPPED for w in q.list_workers(store))
