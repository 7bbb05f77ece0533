"""Engines as SLURM jobs (`mtp engine submit | jobs | stop`), against a real one-node slurmctld and
a throwaway PostgreSQL (tests/conftest.py: `slurm_cluster`, `pg_url`; skipped locally without the
binaries, failed on CI). Also, without SLURM: the refusals, the job script, and the engine's side
(job id and node recorded, SIGUSR1 gives runs back uncharged)."""

from __future__ import annotations

import collections
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import select

from engine import slurm
from store.db import SCHEMA_VERSION, Store
from store.models import Run, RunStatus, Score, Worker
from store.paths import Home
from store.queries import save_experiment
from store.sweep.spec import ExperimentSpec

ROOT = Path(__file__).resolve().parents[2]
FAST = "--engine-arg=--poll 0.2 --heartbeat 0.5 --max-batch 2"


def make_exp(store, name="exp", model="fake-model", seeds="0-1", steps=4, **kw):
    spec = dict(
        model=model,
        source_prompt="a photo of a dog",
        target_prompts=["a dog on the beach"],
        num_steps=steps,
        width=64,
        height=64,
        seeds=seeds,
        layers="decoder",
        start_step="0,1",
        final_step="2,3",
        skip_interval="1,2",
        baseline=False,
    )
    spec.update(kw)
    return save_experiment(store, name, ExperimentSpec(**spec), queue=True)


def runs_of(store) -> list[Run]:
    with store.session() as s:
        return list(s.exec(select(Run).order_by(Run.id)))


def workers_of(store) -> list[Worker]:
    with store.session() as s:
        return list(s.exec(select(Worker).order_by(Worker.started_at)))


def mtp(capsys, *argv) -> tuple[int, str, str]:
    from tui.cli.main import main

    capsys.readouterr()
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def wait_for(pred, timeout=120.0, what="condition", every=0.2, home: Home | None = None):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            logs = f"; SLURM job logs:\n{slurm_logs(home)[-6000:]}" if home else ""
            raise AssertionError(f"timed out waiting for {what}{logs}")
        time.sleep(every)


def job_ids(out: str) -> list[str]:
    m = re.search(r"engine job\(s\): ([\d, ]+)", out)
    assert m, out
    return [j.strip() for j in m.group(1).split(",")]


def slurm_logs(home: Home) -> str:
    return "".join(p.read_text() for p in sorted(home.logs.glob("slurm-*.log")))


def assert_done_exactly_once(store, expected: int) -> list[Run]:
    runs = runs_of(store)
    assert len(runs) == expected
    assert [r.id for r in runs if r.status != RunStatus.DONE] == []
    done = collections.Counter(
        int(m) for m in re.findall(r"run (\d+) done", slurm_logs(store.home))
    )
    assert set(done) == {r.id for r in runs} and max(done.values()) == 1, done
    with store.session() as s:
        per_run = collections.Counter(sc.run_id for sc in s.exec(select(Score)))
    assert all(per_run[r.id] >= 1 for r in runs)
    for r in runs:
        assert (store.home.root / r.image_path).is_file()
    return runs


# ------------------------------------------------------------------ on the test cluster
@pytest.fixture
def cluster_store(slurm_cluster, pg_url, tmp_path, monkeypatch):
    """A data folder on a fresh PostgreSQL database; engines submitted from here use the fake
    backend unless a test says otherwise. Every job is gone when the test ends."""
    monkeypatch.setenv("MTP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MTP_DB_URL", pg_url)
    monkeypatch.setenv("MTP_ENGINE_BACKEND", "fake")  # reaches the job through sbatch --export=ALL
    monkeypatch.setenv("MTP_FAKE_STEP_S", "0.05")
    st = Store(Home.resolve(tmp_path / "home"))
    yield st
    slurm_cluster.cancel_all()
    st.close()


def our_jobs(cluster, ids) -> list[str]:
    return [line for line in cluster.squeue() if line.split()[0] in ids]


def test_two_fake_engines_drain_an_experiment_exactly_once(cluster_store, slurm_cluster, capsys):
    make_exp(cluster_store)  # 16 runs in two source groups
    rc, out, err = mtp(capsys, "engine", "submit", "--cpu", "2", "--partition", "debug", FAST)
    assert rc == 0, err
    ids = job_ids(out)
    assert len(ids) == 2
    # --drain (the default): the engines exit when the queue is empty, so the jobs end.
    wait_for(lambda: not our_jobs(slurm_cluster, ids), what="the drained jobs to end")
    assert_done_exactly_once(cluster_store, 16)
    workers = workers_of(cluster_store)
    assert sorted(w.slurm_job_id for w in workers) == sorted(ids)
    assert {w.slurm_node for w in workers} == {slurm_cluster.node}
    assert all(w.status == "stopped" for w in workers)
    for j in ids:
        log = (cluster_store.home.logs / f"slurm-{j}.log").read_text()
        assert f"mtp: job {j} on" in log and "mtp-engine pid" in log
    rc, out, _ = mtp(capsys, "workers")
    assert rc == 0 and all(f"{j}@{slurm_cluster.node}" in out for j in ids)


def test_two_one_gpu_jobs_on_one_node_both_serve_as_cuda0(cluster_store, slurm_cluster, capsys):
    make_exp(cluster_store)
    rc, out, err = mtp(capsys, "engine", "submit", "--gpus", "2", "--cpus-per-gpu", "1", FAST)
    assert rc == 0, err
    ids = job_ids(out)
    wait_for(lambda: not our_jobs(slurm_cluster, ids), what="the drained GPU jobs to end")
    assert_done_exactly_once(cluster_store, 16)
    # Each job sees its one GPU as cuda:0; the device lock is the job's, so neither refused.
    workers = workers_of(cluster_store)
    assert sorted(w.slurm_job_id for w in workers) == sorted(ids)
    assert {w.device for w in workers} == {"cuda:0"}
    assert "already running" not in slurm_logs(cluster_store.home)


def test_two_demo_model_engines_drain_an_experiment(cluster_store, slurm_cluster, capsys, pg_url):
    os.environ.pop("MTP_ENGINE_BACKEND")  # the real pipeline, on the offline tiny model
    make_exp(cluster_store, model="tiny", steps=3, seeds="0-1", start_step="0", skip_interval="1")
    rc, out, err = mtp(
        capsys,
        "--db",
        pg_url,
        "--home",
        str(cluster_store.home.root),
        "engine",
        "submit",
        "--cpu",
        "2",
        "--demo",
        FAST,
    )
    assert rc == 0, err
    ids = job_ids(out)
    wait_for(lambda: not our_jobs(slurm_cluster, ids), timeout=240, what="the demo engines")
    runs = assert_done_exactly_once(cluster_store, 4)
    with cluster_store.session() as s:
        metrics = {sc.metric for sc in s.exec(select(Score))}
    assert "clip_t" in metrics  # scored by the tiny offline scorer
    assert {w.slurm_job_id for w in workers_of(cluster_store)} == set(ids)
    assert all(r.crashes == 0 for r in runs)


def _holding(store, job: str) -> bool:
    """The engine of this job is generating runs right now."""
    live = {w.id for w in workers_of(store) if w.slurm_job_id == job and w.status != "stopped"}
    return any(r.worker_id in live and r.started_at for r in runs_of(store))


def test_a_cancelled_job_gives_its_runs_to_the_other(
    cluster_store, slurm_cluster, capsys, monkeypatch
):
    monkeypatch.setenv("MTP_FAKE_STEP_S", "0.3")
    make_exp(cluster_store)
    rc, out, err = mtp(capsys, "engine", "submit", "--cpu", "2", FAST)
    assert rc == 0, err
    first, second = job_ids(out)
    wait_for(lambda: _holding(cluster_store, first), what="the first job's engine to hold runs")
    subprocess.run(["scancel", first], check=True, timeout=30)
    wait_for(lambda: not our_jobs(slurm_cluster, [first, second]), timeout=180, what="jobs to end")
    runs = assert_done_exactly_once(cluster_store, 16)
    # SIGTERM from scancel: the runs went back uncharged, the other engine finished them.
    assert all(r.attempts == 1 and r.crashes == 0 for r in runs), [
        (r.id, r.attempts, r.crashes) for r in runs
    ]
    killed = [w for w in workers_of(cluster_store) if w.slurm_job_id == first]
    assert killed and killed[-1].status == "stopped"
    assert "releasing claimed runs" in (cluster_store.home.logs / f"slurm-{first}.log").read_text()


@pytest.mark.parametrize("to", ["batch", "steps"])
def test_the_preemption_warning_gives_runs_back_and_requeues_the_job(
    cluster_store, slurm_cluster, capsys, monkeypatch, to
):
    monkeypatch.setenv("MTP_FAKE_STEP_S", "0.3")
    make_exp(cluster_store)
    rc, out, err = mtp(capsys, "engine", "submit", "--cpu", "2", FAST)
    assert rc == 0, err
    first, second = job_ids(out)
    wait_for(lambda: _holding(cluster_store, first), what="the first job's engine to hold runs")
    # What SLURM sends before the time limit (sbatch --signal=B:USR1@120), sent now: to the
    # batch shell as SLURM does, or to the job's steps as `scancel --signal=USR1 JOB` does.
    batch = ["--batch"] if to == "batch" else []
    subprocess.run(["scancel", "--signal=USR1", *batch, first], check=True, timeout=30)

    def requeued() -> bool:
        show = subprocess.run(["scontrol", "show", "job", first], capture_output=True, text=True)
        m = re.search(r"Restarts=(\d+)", show.stdout)
        return bool(m and int(m.group(1)) >= 1 and "JobState=PENDING" in show.stdout)

    wait_for(requeued, what="the job to be requeued")
    # SLURM starts a requeued job once its old credential expired (the test cluster: 10 s), and
    # a fresh engine serves again.
    wait_for(
        lambda: len([w for w in workers_of(cluster_store) if w.slurm_job_id == first]) >= 2,
        what="a fresh engine in the requeued job",
        home=cluster_store.home,
    )
    wait_for(lambda: not our_jobs(slurm_cluster, [first, second]), timeout=180, what="jobs to end")
    runs = assert_done_exactly_once(cluster_store, 16)
    assert all(r.attempts == 1 and r.crashes == 0 for r in runs), [
        (r.id, r.attempts, r.crashes) for r in runs
    ]
    log = (cluster_store.home.logs / f"slurm-{first}.log").read_text()
    assert "scheduler will end this job soon" in log and f"job {first} requeued" in log
    assert log.count(f"mtp: job {first} on") == 2  # one start, one restart, in one log


def test_engine_stop_cancels_every_job_and_charges_nothing(
    cluster_store, slurm_cluster, capsys, monkeypatch
):
    monkeypatch.setenv("MTP_FAKE_STEP_S", "0.5")
    make_exp(cluster_store)
    # Three one-CPU engines on a two-CPU node: two run, one waits for resources.
    rc, out, err = mtp(capsys, "engine", "submit", "--cpu", "3", "--stay", FAST)
    assert rc == 0, err
    ids = job_ids(out)
    wait_for(lambda: sum(_holding(cluster_store, j) for j in ids) == 2, what="two engines busy")
    rc, out, _ = mtp(capsys, "engine", "jobs")
    assert rc == 0
    states = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert sorted(states) == sorted(ids)
    assert sorted(states.values()) == ["PENDING", "RUNNING", "RUNNING"]
    # Each running job is matched to its engine's worker row (status and device).
    running = [line for line in out.splitlines() if " RUNNING " in line]
    assert len(running) == 2 and all(
        line.endswith(" on cpu") or " on cpu, run " in line for line in running
    ), out

    rc, out, err = mtp(capsys, "engine", "stop")
    assert rc == 0, err
    assert sorted(re.search(r"cancelled SLURM job\(s\) ([\d, ]+)", out).group(1).split(", ")) == (
        sorted(ids)
    )
    assert slurm_cluster.squeue() == []  # nothing left behind, not even completing
    runs = runs_of(cluster_store)
    assert not [r for r in runs if r.status == RunStatus.RUNNING]
    assert all(r.crashes == 0 for r in runs)
    assert all(r.attempts == (1 if r.status == RunStatus.DONE else 0) for r in runs)
    rc, out, _ = mtp(capsys, "engine", "jobs")
    assert rc == 0 and "no engine jobs" in out


async def test_the_apps_stop_key_cancels_the_jobs(cluster_store, slurm_cluster, capsys):
    from tests.tui import SIZE
    from tests.tui import wait_for as wait_in_app
    from tui.app import MtpApp

    rc, out, err = mtp(capsys, "engine", "submit", "--cpu", "1", "--stay", FAST)
    assert rc == 0, err
    ids = job_ids(out)
    wait_for(lambda: workers_of(cluster_store), what="the engine to start")
    app = MtpApp(cluster_store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_in_app(
            pilot,
            lambda: app.screen.query_one("#workers").row_count == 1,
            what="the workers table",
        )
        await pilot.press("T")
        await wait_in_app(
            pilot,
            lambda: not our_jobs(slurm_cluster, ids),
            what="the job to be cancelled",
            timeout=60,
        )
        said = [n.message for n in app._notifications]
        assert any(f"cancelled SLURM job(s) {ids[0]}" in m for m in said), said
    # scancel's SIGTERM reached the engine, which stopped cleanly (not killed, not left running).
    wait_for(lambda: workers_of(cluster_store)[0].status == "stopped", what="the engine to stop")


# ------------------------------------------------------------------ without a cluster
def test_submit_refuses_sqlite(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MTP_DB_URL", raising=False)
    rc, _, err = mtp(capsys, "--home", str(tmp_path / "h"), "engine", "submit", "--cpu", "1")
    assert rc == 2 and "PostgreSQL" in err and "SQLite" in err
    rc, _, err = mtp(capsys, "--home", str(tmp_path / "h"), "engine", "submit")
    assert rc == 2 and "--gpus N" in err and "--cpu N" in err


def test_the_job_script_and_sbatch_options(tmp_path):
    home = Home.resolve(tmp_path / "h w")  # a space: everything must be quoted
    req = slurm.SubmitRequest(
        gpus=2,
        partition="gpu",
        time="4:00:00",
        account="lab",
        constraint="a100",
        cpus_per_engine=8,
        mem="32G",
        slurm_args=["--qos=low --nice=10"],
        engine_args=["--no-score"],
    )
    req.check()
    cmd = slurm.sbatch_command(req, home, "mtp-abc")
    for opt in (
        "--job-name=mtp-abc",
        "--gpus=1",  # one job per GPU
        "--cpus-per-gpu=8",
        "--signal=B:USR1@120",
        "--requeue",
        "--partition=gpu",
        "--time=4:00:00",
        "--account=lab",
        "--constraint=a100",
        "--mem=32G",
        "--qos=low",
        "--nice=10",
        f"--output={home.logs}/slurm-%j.log",
    ):
        assert opt in cmd, opt
    url = "postgresql+psycopg://u:p@db/mtp"
    script = slurm.batch_script(req, home, url)
    assert f"export MTP_HOME='{home.root}'" in script
    assert f"export MTP_DB_URL={shlex.quote(url)}" in script
    last = script.strip().splitlines()[-1]
    # The engine is the job's step; srun is the batch shell and forwards the warning signal.
    assert last.startswith(
        f"exec srun --ntasks=1 --mpi=none {sys.executable} -m engine.cli --home '{home.root}'"
    )
    assert last.endswith("--device cuda:0 --drain --no-score")
    cpu = slurm.SubmitRequest(cpu=1, drain=False)
    assert "--cpus-per-task=1" in slurm.sbatch_command(cpu, home, "mtp-abc")
    assert "--gpus=1" not in slurm.sbatch_command(cpu, home, "mtp-abc")
    assert slurm.engine_argv(cpu, home)[-2:] == ["--device", "cpu"]  # --stay: no --drain
    assert slurm.srun_argv(cpu)[-1] == "--cpus-per-task=1"
    # The script is valid bash.
    check = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert check.returncode == 0, check.stderr


def _engine_in_fake_job(home: Home, env_extra: dict, *args) -> subprocess.Popen:
    env = dict(
        os.environ,
        MTP_ENGINE_BACKEND="fake",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
        SLURM_JOB_ID="4242",
        SLURMD_NODENAME="node-7",
        PATH="/nonexistent",  # no scontrol: the requeue is attempted and said to fail
        **env_extra,
    )
    env.pop("MTP_DB_URL", None)
    cmd = [sys.executable, "-m", "engine.cli", "--home", str(home.root), "--poll", "0.05"]
    return subprocess.Popen([*cmd, *args], env=env, cwd=ROOT, stderr=subprocess.DEVNULL)


def test_an_engine_in_a_job_records_it_and_the_warning_signal_charges_nothing(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("MTP_DB_URL", raising=False)
    home = Home.resolve(tmp_path / "h")
    st = Store(home)
    make_exp(st)
    proc = _engine_in_fake_job(home, {"MTP_FAKE_STEP_S": "0.3"}, "--drain")
    try:
        wait_for(lambda: any(r.started_at for r in runs_of(st)), timeout=60, what="a run in flight")
        proc.send_signal(signal.SIGUSR1)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    (w,) = workers_of(st)
    assert (w.slurm_job_id, w.slurm_node, w.status) == ("4242", "node-7", "stopped")
    runs = runs_of(st)
    assert not [r for r in runs if r.status == RunStatus.RUNNING]
    assert all(r.crashes == 0 for r in runs)
    assert all(r.attempts == (1 if r.status == RunStatus.DONE else 0) for r in runs)
    assert any(r.status == RunStatus.QUEUED for r in runs)
    log = (home.logs / "slurm-4242.log").read_text()  # the job's log, not the device's
    assert "scheduler will end this job soon" in log and "could not requeue job 4242" in log
    st.close()


def test_the_worker_columns_are_added_to_a_version_3_database(tmp_path, monkeypatch):
    monkeypatch.delenv("MTP_DB_URL", raising=False)
    home = Home.resolve(tmp_path / "h")
    Store(home).close()
    con = sqlite3.connect(home.db_path)
    con.execute("ALTER TABLE worker DROP COLUMN slurm_job_id")
    con.execute("ALTER TABLE worker DROP COLUMN slurm_node")
    con.execute(
        "INSERT INTO worker (id, host, pid, device, status, started_at, heartbeat_at, "
        "step, total_steps, message) VALUES ('h:1:cpu', 'h', 1, 'cpu', 'stopped', "
        "'2026-01-01', '2026-01-01', 0, 0, '')"
    )
    con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    st = Store(home)
    assert st.schema_version() == SCHEMA_VERSION
    (w,) = workers_of(st)
    assert w.id == "h:1:cpu" and w.slurm_job_id is None and w.slurm_node is None
    st.close()


def test_current_job_reads_slurm_environment():
    assert slurm.current_job({}) is None
    job = slurm.current_job({"SLURM_JOB_ID": "17", "SLURM_JOB_NODELIST": "gpu[01-02]"})
    assert job == slurm.JobInfo("17", "gpu[01-02]")
    job = slurm.current_job({"SLURM_JOB_ID": "17", "SLURMD_NODENAME": "gpu01"})
    assert job.node == "gpu01"


def test_the_slurm_module_and_the_cluster_commands_are_torch_free():
    code = (
        "import sys, engine.slurm, tui.cli.cluster, tui.cli.main\n"
        "tui.cli.main.build_parser()\n"
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'open_clip') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
