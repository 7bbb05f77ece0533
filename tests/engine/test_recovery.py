"""Engines as real processes: SIGKILL mid-batch and restart, two engines on one database,
detached start surviving SIGHUP of its parent, the per-device lock."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sqlmodel import select

from engine.launch import EngineAlreadyRunning, engine_running, log_path, start_engine, stop_engine
from store import queue as q
from store.models import Run, RunStatus, Score
from store.queries import save_experiment
from store.sweep.spec import ExperimentSpec

ROOT = Path(__file__).resolve().parents[2]


# Each test that uses `home` or `store` runs on SQLite and on a real PostgreSQL server (tests/conftest.py).
DB_BACKENDS = ("sqlite", "postgresql")


def make_exp(store, name="exp", model="fake-model", **kw):
    base = dict(
        model=model,
        source_prompt="a photo of a dog",
        target_prompts=["a dog on the beach"],
        num_steps=4,
        width=64,
        height=64,
        seeds="0",
        layers="decoder",
        start_step="0,1",
        final_step="2,3",
        skip_interval="1,2",
        baseline=False,
    )
    base.update(kw)
    return save_experiment(store, name, ExperimentSpec(**base), queue=True)


def runs_of(store) -> list[Run]:
    with store.session() as s:
        return list(s.exec(select(Run).order_by(Run.id)))


def fake_env(tmp_path, step_s: float) -> dict:
    env = dict(
        os.environ,
        MTP_ENGINE_BACKEND="fake",
        MTP_FAKE_STEP_S=str(step_s),
        MTP_FAKE_LOG=str(tmp_path / "generate.log"),
        OMP_NUM_THREADS="1",
    )
    env["PYTHONPATH"] = str(ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env


def engine(home, env, device="cpu", *extra) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "engine.cli",
        "--home",
        str(home.root),
        "--device",
        device,
        "--poll",
        "0.05",
        "--heartbeat",
        "0.1",
        *extra,
    ]
    # A file, not a pipe: an engine blocked on a full stderr pipe would look hung.
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    proc.err_file = err
    return proc


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    """Wait for an engine; its stderr tail, for assertion messages."""
    proc.wait(timeout=timeout)
    proc.err_file.seek(0)
    return proc.err_file.read().decode("utf-8", "replace")[-3000:]


def wait_for(pred, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.03)


def done_counts(home, device="cpu") -> collections.Counter:
    text = log_path(home, device).read_text() if log_path(home, device).exists() else ""
    return collections.Counter(int(m) for m in re.findall(r"run (\d+) done", text))


def killed_while_committing(home, device="cpu") -> set[int]:
    """Runs an engine was committing when it was killed: in its log "committing run(s) [...]" is
    the last word on them (no "done" line after it before the next start). Their commit may
    have landed without the log line that follows it."""
    text = log_path(home, device).read_text() if log_path(home, device).exists() else ""
    out: set[int] = set()
    for life in re.split(r"worker \S+ started", text):
        pending: set[int] = set()
        for line in life.splitlines():
            if m := re.search(r"committing run\(s\) \[([\d, ]+)\]", line):
                pending = {int(x) for x in m.group(1).split(",")}
            elif m := re.search(r"run (\d+) done", line):
                pending.discard(int(m.group(1)))
        out |= pending
    return out


def assert_all_done_once(store, runs_expected: int, devices=("cpu",)) -> list[Run]:
    runs = runs_of(store)
    assert len(runs) == runs_expected
    assert [r.id for r in runs if r.status != RunStatus.DONE] == []
    committed = collections.Counter()
    cut_short: set[int] = set()
    for d in devices:
        committed += done_counts(store.home, d)
        cut_short |= killed_while_committing(store.home, d)
    assert max(committed.values()) == 1, committed  # nothing finished twice
    # every run's commit is in a log: its "done" line, or a kill right after "committing"
    assert set(committed) | cut_short == {r.id for r in runs}, (committed, cut_short)
    with store.session() as s:
        per_run = collections.Counter(sc.run_id for sc in s.exec(select(Score)))
    assert all(per_run[r.id] == 1 for r in runs)
    for r in runs:
        for rel in (r.image_path, r.source_image_path):
            assert (store.home.root / rel).is_file()
    return runs


def test_sigkill_mid_batch_and_restart_repeatedly(store, tmp_path):
    for seed in range(4):
        make_exp(store, f"e{seed}", seeds=str(seed))  # 4 groups x 8 runs = 8 batches of 4
    env = fake_env(tmp_path, step_s=0.1)

    def done() -> int:
        return sum(r.status == RunStatus.DONE for r in runs_of(store))

    kills = 0
    for _ in range(4):
        before = done()
        proc = engine(store.home, env, "cpu", "--max-batch", "4", "--max-attempts", "10")
        try:
            # Let it commit one batch (so each life makes progress), then kill it inside the next.
            wait_for(lambda: done() > before or proc.poll() is not None, what="a committed batch")
            wait_for(
                lambda: (
                    any(r.status == RunStatus.RUNNING for r in runs_of(store))
                    or done() == 32
                    or proc.poll() is not None
                ),
                what="a claimed batch",
            )
            time.sleep(0.15)  # inside the 0.4 s of denoising
        finally:
            if proc.poll() is None:
                proc.kill()
                kills += 1
            proc.wait()  # reaped, so its pid is gone for the next engine's recovery
        assert proc.returncode == -signal.SIGKILL, finish(proc)
    assert kills == 4
    proc = engine(store.home, env, "cpu", "--once", "--max-batch", "4")
    err = finish(proc)
    assert proc.returncode == 0, err
    runs = assert_all_done_once(store, 32)
    assert max(r.attempts for r in runs) >= 2  # killed batches really were rerun
    assert "database is locked" not in log_path(store.home, "cpu").read_text()


def test_two_engine_processes_share_sixty_runs(store, tmp_path):
    for seed in range(8):
        make_exp(store, f"e{seed}", seeds=str(seed))  # 64 runs in 8 groups
    env = fake_env(tmp_path, step_s=0.04)
    procs = [engine(store.home, env, dev, "--once", "--max-batch", "4") for dev in ("cpu", "cpu:1")]
    for p in procs:
        err = finish(p)
        assert p.returncode == 0, err
    assert_all_done_once(store, 64, devices=("cpu", "cpu:1"))
    lines = (tmp_path / "generate.log").read_text().splitlines()
    generated = [int(i) for line in lines for i in line.split("\t")[2].split(",")]
    assert sorted(generated) == [r.id for r in runs_of(store)]  # each generated exactly once
    assert len({line.split("\t")[0] for line in lines}) == 2  # both engines worked
    for dev in ("cpu", "cpu:1"):
        assert "database is locked" not in log_path(store.home, dev).read_text()


def test_an_engine_process_and_an_in_process_worker_share_the_real_tiny_model(
    store, tiny_model_dir
):
    # One subprocess, not two: importing torch + diffusers twice more would cost half a minute
    # here; this test process already holds torch for the second worker.
    from engine.backends.diffusion import PipelineBackend
    from engine.worker import Worker, WorkerConfig

    make_exp(
        store,
        "a",
        model=str(tiny_model_dir),
        num_steps=3,
        seeds="0-5",
        start_step="0",
        final_step="2",
        skip_interval="1",
        baseline=True,
    )  # 12 runs in 6 groups
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.pop("MTP_ENGINE_BACKEND", None)
    proc = engine(store.home, env, "cpu", "--once", "--no-score")
    try:
        wait_for(
            lambda: (
                any(r.status != RunStatus.QUEUED for r in runs_of(store)) or proc.poll() is not None
            ),
            timeout=120,
            what="the engine process to claim",
        )

        class Recording(PipelineBackend):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.ids: list[int] = []

            def generate(self, source, targets, step_callback):
                self.ids += [t.run_id for t in targets]
                return super().generate(source, targets, step_callback)

        backend = Recording("cpu", home=store.home)
        Worker(
            store,
            backend,
            WorkerConfig(device="cpu:1", once=True, max_batch=2, heartbeat_s=0.2),
            worker_id="in-process",
        ).run()
        err = finish(proc, timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    runs = runs_of(store)
    assert {r.status for r in runs} == {RunStatus.DONE}, [r.error for r in runs]
    committed = done_counts(store.home, "cpu")
    assert set(committed.values()) == {1} and not set(committed) & set(backend.ids)
    assert sorted(list(committed) + backend.ids) == [r.id for r in runs]
    assert "database is locked" not in log_path(store.home, "cpu").read_text()


def test_detached_engine_survives_sighup_of_its_parent(store, tmp_path):
    env = fake_env(tmp_path, step_s=0.01)
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from engine.launch import start_engine\n"
            "print(start_engine(sys.argv[1], device='cpu', extra_args=['--poll', '0.05', '--heartbeat', '0.1']), flush=True)\n"
            "time.sleep(120)\n",
            str(store.home.root),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        start_new_session=True,
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
        second = subprocess.run(
            [sys.executable, "-m", "engine.cli", "--home", str(store.home.root), "--device", "cpu"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 3 and "already running on cpu" in second.stderr

        make_exp(store)  # queued after the parent is gone: the engine still drains it
        wait_for(
            lambda: {r.status for r in runs_of(store)} == {RunStatus.DONE},
            what="the queue to drain",
        )
        wait_for(
            lambda: any(
                w.pid == pid and w.status == q.WorkerStatus.IDLE for w in q.list_workers(store)
            ),
            what="the engine to report idle",
        )
    finally:
        assert stop_engine(store.home, wait_s=20) == [pid]
    assert engine_running(store.home) == []
    assert any(w.pid == pid and w.status == q.WorkerStatus.STOPPED for w in q.list_workers(store))


def test_engine_start_devices_starts_one_detached_engine_per_device(store, tmp_path, monkeypatch):
    import socket

    from tui.cli.main import main as mtp_main

    for key, value in fake_env(tmp_path, step_s=0.01).items():
        monkeypatch.setenv(key, value)
    make_exp(store)  # 8 runs
    started = []
    try:
        assert (
            mtp_main(["--home", str(store.home.root), "engine", "start", "--devices", "cpu,cpu:1"])
            == 0
        )
        started = engine_running(store.home)
        assert sorted(e["device"] for e in started) == ["cpu", "cpu:1"]
        assert len({e["pid"] for e in started}) == 2
        wait_for(
            lambda: {r.status for r in runs_of(store)} == {RunStatus.DONE},
            what="the queue to drain",
        )

        def workers():
            return [w for w in q.list_workers(store) if w.pid in {e["pid"] for e in started}]

        wait_for(lambda: len(workers()) == 2, what="both engines to register")
        assert sorted(w.device for w in workers()) == ["cpu", "cpu:1"]
        assert all(
            w.host == socket.gethostname() and w.id.startswith(w.host + ":") for w in workers()
        )
        # A second start on a busy device is refused; the other device is named as started.
        assert (
            mtp_main(["--home", str(store.home.root), "engine", "start", "--devices", "cpu"]) == 1
        )
    finally:
        stop_engine(store.home, wait_s=20)
    assert engine_running(store.home) == []


def test_devices_are_parsed_and_all_means_every_visible_gpu(monkeypatch):
    from engine.launch import EngineError, parse_devices

    assert parse_devices("cuda:0, 1,cuda:1") == ["cuda:0", "cuda:1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6")
    assert parse_devices("all") == ["cuda:0", "cuda:1", "cuda:2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(EngineError, match="no CUDA device"):
        parse_devices("all")
    with pytest.raises(EngineError, match="not a device"):
        parse_devices("gpu0")


def test_an_engine_on_a_folder_that_is_not_the_databases_refuses_to_start(store, tmp_path):
    make_exp(store)
    wrong = tmp_path / "mount-point-without-the-share"
    wrong.mkdir()
    # The same database (on SQLite: the file in the right folder), a folder that is not its own.
    env = dict(fake_env(tmp_path, step_s=0.0), MTP_DB_URL=store.url)
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--home", str(wrong), "--device", "cpu", "--once"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert (
        "refusing to start" in proc.stderr and str(wrong) in proc.stderr and "mount" in proc.stderr
    )
    assert {r.status for r in runs_of(store)} == {RunStatus.QUEUED}  # it took nothing


# ------------------------------------------------------------------ crashes and faults
def test_random_sigkills_with_the_default_attempt_limit_lose_and_double_nothing(store, tmp_path):
    import random

    for seed in range(6):
        make_exp(store, f"e{seed}", seeds=str(seed))  # 6 groups x 8 runs
    env = fake_env(tmp_path, step_s=0.03)
    rng = random.Random(11)
    kills = 0
    for _ in range(12):
        proc = engine(store.home, env, "cpu", "--max-batch", "4")  # default --max-attempts
        try:
            time.sleep(
                rng.uniform(0.05, 1.5)
            )  # at any moment: start-up, claim, generate, write, commit
        finally:
            if proc.poll() is None:
                proc.kill()
                kills += 1
            proc.wait()
    assert kills >= 10
    proc = engine(store.home, env, "cpu", "--once", "--max-batch", "4")
    err = finish(proc)
    assert proc.returncode == 0, err
    runs = assert_all_done_once(store, 48)
    assert not [r.error for r in runs if r.status == RunStatus.FAILED]


def test_kill_between_artifact_write_and_commit_reruns_the_batch_once(store, tmp_path):
    make_exp(store)  # 8 runs, one group
    env = dict(fake_env(tmp_path, step_s=0.0), MTP_FAULT="kill-after-write:1")
    proc = engine(store.home, env, "cpu", "--max-batch", "4")
    proc.wait(timeout=60)
    assert (
        proc.returncode == -signal.SIGKILL
    )  # it killed itself with the files written, uncommitted
    assert {r.status for r in runs_of(store)} == {RunStatus.RUNNING, RunStatus.QUEUED}
    proc = engine(store.home, fake_env(tmp_path, step_s=0.0), "cpu", "--once", "--max-batch", "4")
    err = finish(proc)
    assert proc.returncode == 0, err
    runs = assert_all_done_once(store, 8)
    # the killed batch: four in flight, so none charged, each retried alone
    assert [r.crashes for r in runs] == [0] * 8 and sum(r.solo for r in runs) == 4


def test_full_disk_engine_pauses_then_drains_and_once_exits_non_zero(store, tmp_path):
    make_exp(store, seeds="0,1")  # 16 runs
    fault = tmp_path / "disk-full"
    fault.touch()
    env = dict(fake_env(tmp_path, step_s=0.0), MTP_FAULT=f"enospc:{fault}")
    once = engine(store.home, env, "cpu", "--once")
    err = finish(once)
    assert once.returncode == 4 and "No space left on device" in err, err
    assert {r.status for r in runs_of(store)} == {RunStatus.QUEUED}

    proc = engine(store.home, env, "cpu", "--max-batch", "4")
    try:
        wait_for(
            lambda: any(w.status == q.WorkerStatus.PAUSED for w in q.list_workers(store)),
            what="paused",
        )
        shown = subprocess.run(
            [sys.executable, "-m", "tui.cli.main", "--home", str(store.home.root), "queue"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (
            "PAUSED: cannot write artifacts" in shown.stdout and "No space left" in shown.stdout
        ), shown.stdout
        assert {r.status for r in runs_of(store)} == {RunStatus.QUEUED}
        fault.unlink()
        wait_for(
            lambda: {r.status for r in runs_of(store)} == {RunStatus.DONE},
            what="the queue to drain",
        )
    finally:
        proc.terminate()
        err = finish(proc)
    assert proc.returncode == 0, err
    assert_all_done_once(store, 16)
    # Many probes while paused, one line in the log.
    assert (
        len(re.findall(rf"\[{proc.pid}\] engine paused", log_path(store.home, "cpu").read_text()))
        == 1
    )


def test_a_foreground_engine_ignores_sighup(store, tmp_path):
    env = fake_env(tmp_path, step_s=0.01)
    proc = engine(store.home, env, "cpu")
    try:
        wait_for(
            lambda: any(w.status == q.WorkerStatus.IDLE for w in q.list_workers(store)),
            what="the engine",
        )
        proc.send_signal(signal.SIGHUP)  # the terminal went away
        make_exp(store)
        wait_for(
            lambda: {r.status for r in runs_of(store)} == {RunStatus.DONE},
            what="the queue to drain",
        )
        assert proc.poll() is None
    finally:
        proc.terminate()
        finish(proc)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    "first,second", [("cuda", "cuda:0"), ("cpu", "cpu:0"), ("CUDA:0", "0"), ("cuda:1", "cuda:01")]
)
def test_device_aliases_take_one_lock(home, first, second):
    from engine.launch import DeviceLock, host_slug, normalize_device

    assert normalize_device(first) == normalize_device(second)
    with DeviceLock(home, first) as lock:
        assert host_slug() in lock.path.name
        with pytest.raises(EngineAlreadyRunning):
            DeviceLock(home, second).acquire()
    assert log_path(home, first) == log_path(home, second)
    with DeviceLock(home, first):
        DeviceLock(home, "cuda:7").acquire().release()  # other devices stay free


def test_engine_refuses_a_second_spelling_of_a_busy_device(store, tmp_path):
    env = fake_env(tmp_path, step_s=0.01)
    proc = engine(store.home, env, "cpu")
    try:
        wait_for(lambda: engine_running(store.home), what="the lock")
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "--home",
                str(store.home.root),
                "--device",
                "cpu:0",
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 3 and "already running on cpu" in second.stderr
    finally:
        proc.terminate()
        finish(proc)


def test_a_run_that_kills_every_engine_is_failed_after_the_default_limit(store, tmp_path):
    make_exp(
        store,
        target_prompts=["a dog on the beach", "crash now"],
        start_step="1",
        final_step="3",
        skip_interval="1",
    )  # two runs, one batch
    env = dict(fake_env(tmp_path, step_s=0.0), MTP_FAKE_CRASH_PROMPT="crash now")
    deaths = 0
    for _ in range(q.DEFAULT_MAX_ATTEMPTS + 3):
        proc = engine(store.home, env, "cpu", "--once")  # default --max-attempts
        err = finish(proc)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, err
        deaths += 1
    assert proc.returncode == 0
    # the first death had both in flight: nobody charged; then the poison alone, five times
    assert deaths == q.DEFAULT_MAX_ATTEMPTS + 1
    ok, poison = runs_of(store)
    assert ok.status == RunStatus.DONE and ok.crashes == 0  # its batch-mate never charged it
    assert poison.status == RunStatus.FAILED and poison.crashes == q.DEFAULT_MAX_ATTEMPTS
    assert (
        f"{q.DEFAULT_MAX_ATTEMPTS} engines died in a row while generating this run" in poison.error
    )


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB file system (tmpfs), where one can be mounted (root, a privileged container)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(mnt)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a small file system here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_really_full_disk_pauses_the_engine_and_it_resumes(small_disk, tmp_path):
    from store.db import Store
    from store.paths import Home

    store = Store(Home.resolve(small_disk / "home"))
    try:
        make_exp(store, seeds="0,1", width=256, height=256)  # 16 runs
        proc = engine(store.home, fake_env(tmp_path, step_s=0.1), "cpu", "--max-batch", "4")
        try:
            wait_for(
                lambda: any(r.status == RunStatus.DONE for r in runs_of(store)),
                what="a first batch",
            )
            filler = small_disk / "filler"
            with open(filler, "wb") as fh:  # take every free block
                try:
                    while True:
                        fh.write(b"\0" * 65536)
                        fh.flush()
                except OSError:
                    pass
            wait_for(
                lambda: any(w.status == q.WorkerStatus.PAUSED for w in q.list_workers(store)),
                what="the engine to say it is paused",
            )
            (w,) = [w for w in q.list_workers(store) if w.status == q.WorkerStatus.PAUSED]
            assert "full" in w.message or "No space" in w.message
            wait_for(
                lambda: not any(r.status == RunStatus.RUNNING for r in runs_of(store)),
                what="runs given back",
            )
            assert not any(r.status == RunStatus.FAILED for r in runs_of(store))
            filler.unlink()
            wait_for(
                lambda: {r.status for r in runs_of(store)} == {RunStatus.DONE},
                timeout=120,
                what="the queue to drain",
            )
        finally:
            proc.terminate()
            err = finish(proc)
        assert proc.returncode == 0, err
        runs = runs_of(store)
        # (Not the log-based count of assert_all_done_once: the log shares the full disk.)
        assert len(runs) == 16 and {r.status for r in runs} == {RunStatus.DONE}
        with store.session() as s:
            per_run = collections.Counter(sc.run_id for sc in s.exec(select(Score)))
        assert all(per_run[r.id] == 1 and (store.home.root / r.image_path).is_file() for r in runs)
    finally:
        store.close()
