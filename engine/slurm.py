"""Engines as SLURM jobs: `mtp engine submit | jobs | stop` (torch-free: the CLI and the app import it).

SLURM is reached through its own commands (sbatch, squeue, scancel, scontrol), run as
subprocesses: they are on every login node, read the cluster's configuration and the user's
defaults ($SLURM_CONF, SBATCH_* variables) exactly as the user's own commands do, and need no
Python package. What a job runs is one short shell script, so nothing is pickled across hosts.

One job per engine (one GPU each, or one CPU engine each with `--cpu`), never one N-GPU job: a
one-GPU request is scheduled sooner than N GPUs on one node, each job is preempted, requeued or
cancelled alone, and a drained engine gives its GPU back at once instead of holding it until the
last engine of the allocation finishes.

Each job runs `python -m engine.cli` with the submitting interpreter (the nodes share the
software as they share the data folder) as its one job step (`exec srun ...`), with MTP_HOME and
MTP_DB_URL exported in the script, and is submitted with:
- `--signal=B:USR1@<lead>`: SLURM's warning before the time limit (and before preemption where the
  cluster sends it) reaches the batch shell, which `exec` made srun, which forwards it to the
  engine (a signal sent to the job's steps reaches the engine directly); the engine gives its runs
  back uncharged and asks SLURM to requeue its job (`requeue_self`), which then starts a fresh
  engine.
- `--requeue`: the cluster may also requeue it itself (preemption, a node failure).
- `--output=<data folder>/logs/slurm-%j.log`, appended across requeues; the engine logs there.
- the job name `mtp-<data folder id>`, by which `mtp engine jobs` and `mtp engine stop` find the
  jobs of this data folder and no other.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from store.paths import Home

from .launch import EngineError

JOB_PREFIX = "mtp-"
# Seconds before the time limit at which SLURM sends the warning signal: enough for an engine to
# finish its current denoising step, give its runs back and exit.
DEFAULT_SIGNAL_LEAD_S = 120
COMMAND_TIMEOUT_S = 60
_SQUEUE_FORMAT = "%i|%T|%M|%l|%P|%N|%r"


class SlurmError(EngineError):
    """SLURM refused or is missing; the message is fit to show as is."""

    def __init__(self, message: str, submitted: Sequence[str] = ()):
        super().__init__(message)
        self.submitted = list(submitted)


# ------------------------------------------------------------------ the engine's side
@dataclass(frozen=True)
class JobInfo:
    job_id: str
    node: str | None


def current_job(environ: Mapping[str, str] | None = None) -> JobInfo | None:
    """The SLURM job this process runs in (set by slurmd for every process of a job), or None."""
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job:
        return None
    node = env.get("SLURMD_NODENAME") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    return JobInfo(job.strip(), (node or "").strip() or None)


def requeue_self(environ: Mapping[str, str] | None = None) -> str:
    """Ask SLURM to requeue the job this engine runs in (after it gave its runs back); says what
    happened, for the log."""
    job = current_job(environ)
    if job is None:
        return "not in a SLURM job: nothing to requeue"
    try:
        out = _run(["scontrol", "requeue", job.job_id])
    except SlurmError as exc:
        return f"could not requeue job {job.job_id}: {exc}"
    if out.returncode != 0:
        return f"could not requeue job {job.job_id}: {(out.stderr or out.stdout).strip()}"
    return f"job {job.job_id} requeued: a fresh engine starts when SLURM runs it again"


def job_label(worker) -> str:
    """`<job id>@<node>` for a Worker row of an engine that ran as a SLURM job, else `-`."""
    if not worker.slurm_job_id:
        return "-"
    return (
        f"{worker.slurm_job_id}@{worker.slurm_node}" if worker.slurm_node else worker.slurm_job_id
    )


# ------------------------------------------------------------------ the submitting side
def job_name(home_id: str) -> str:
    """The name of every job of one data folder (its id), so listing and cancelling find only them."""
    if not home_id:
        raise SlurmError("this data folder has no id yet: run `mtp init` first")
    return f"{JOB_PREFIX}{home_id[:16]}"


def available() -> bool:
    """Whether SLURM's client commands are on $PATH here."""
    return all(shutil.which(c) for c in ("sbatch", "squeue", "scancel"))


def _run(cmd: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    if shutil.which(cmd[0]) is None:
        raise SlurmError(
            f"SLURM's `{cmd[0]}` is not on PATH here: submit from a host of the cluster "
            f"(a login node), where sbatch, squeue and scancel work"
        )
    try:
        return subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise SlurmError(
            f"`{cmd[0]}` did not answer in {COMMAND_TIMEOUT_S} s (is slurmctld up?)"
        ) from None
    except OSError as exc:
        raise SlurmError(f"cannot run `{cmd[0]}`: {exc}") from None


@dataclass
class SubmitRequest:
    """What `mtp engine submit` asks for: ``gpus`` GPU engines or ``cpu`` CPU engines, one job each."""

    gpus: int = 0
    cpu: int = 0
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    constraint: str | None = None
    cpus_per_engine: int | None = None  # --cpus-per-gpu for GPU engines, --cpus-per-task on CPU
    mem: str | None = None
    slurm_args: Sequence[str] = ()  # each item split like a shell would
    drain: bool = True
    demo: bool = False
    engine_args: Sequence[str] = ()  # each item split like a shell would
    signal_lead_s: int = DEFAULT_SIGNAL_LEAD_S

    def check(self) -> None:
        if self.gpus < 0 or self.cpu < 0:
            raise SlurmError("--gpus and --cpu take a number of engines (0 or more)")
        if self.gpus and self.cpu:
            raise SlurmError("give --gpus N (GPU engines) or --cpu N (CPU engines), not both")
        if not (self.gpus or self.cpu):
            raise SlurmError(
                "nothing to submit: --gpus N submits N one-GPU engines; on a partition without "
                "GPUs, --cpu N submits N CPU engines"
            )
        if self.cpus_per_engine is not None and self.cpus_per_engine < 1:
            raise SlurmError("--cpus-per-gpu takes 1 or more")
        if self.signal_lead_s < 1:
            raise SlurmError("the warning signal must come at least 1 s before the time limit")

    @property
    def count(self) -> int:
        return self.gpus or self.cpu

    @property
    def device(self) -> str:
        # SLURM hands each one-GPU job its GPU as the only visible one: cuda:0 inside the job.
        return "cuda:0" if self.gpus else "cpu"


def check_database(db_url: str | None) -> str | None:
    """Refuse a database the nodes cannot share; a warning (or None) for one they may not reach."""
    if not db_url or db_url.startswith("sqlite"):
        raise SlurmError(
            "engines on cluster nodes need the shared PostgreSQL database, not the SQLite file of "
            "this data folder (SQLite over a network filesystem is not safe): set $MTP_DB_URL or "
            "--db to a postgresql+psycopg://... URL that the nodes can reach"
        )
    from sqlalchemy.engine import make_url

    try:
        host = make_url(db_url).host
    except Exception:
        return None
    if host in (None, "", "localhost", "127.0.0.1", "::1"):
        return (
            "the database URL names this host (localhost or a local socket): engines on other "
            "nodes will look for the database on themselves; use the database server's name"
        )
    return None


def sbatch_command(req: SubmitRequest, home: Home, name: str) -> list[str]:
    cmd = [
        "sbatch",
        "--parsable",
        f"--job-name={name}",
        "--ntasks=1",
        f"--output={home.logs / 'slurm-%j.log'}",
        "--open-mode=append",
        f"--signal=B:USR1@{int(req.signal_lead_s)}",
        "--requeue",
        "--export=ALL",
        f"--chdir={home.root}",
    ]
    if req.gpus:
        cmd.append("--gpus=1")
        if req.cpus_per_engine:
            cmd.append(f"--cpus-per-gpu={req.cpus_per_engine}")
    else:
        cmd.append(f"--cpus-per-task={req.cpus_per_engine or 1}")
    for flag, value in (
        ("partition", req.partition),
        ("time", req.time),
        ("account", req.account),
        ("constraint", req.constraint),
        ("mem", req.mem),
    ):
        if value:
            cmd.append(f"--{flag}={value}")
    for item in req.slurm_args:
        cmd += shlex.split(item)
    return cmd


def engine_argv(req: SubmitRequest, home: Home) -> list[str]:
    argv = [sys.executable, "-m", "engine.cli", "--home", str(home.root), "--device", req.device]
    if req.demo:
        argv.append("--demo")
    if req.drain:
        argv.append("--drain")
    for item in req.engine_args:
        argv += shlex.split(item)
    return argv


def srun_argv(req: SubmitRequest) -> list[str]:
    # --mpi=none: the engine is no MPI program; a cluster's MpiDefault (pmix) has nothing to set up.
    argv = ["srun", "--ntasks=1", "--mpi=none"]
    if not req.gpus:
        argv.append(f"--cpus-per-task={req.cpus_per_engine or 1}")
    return argv


def batch_script(req: SubmitRequest, home: Home, db_url: str) -> str:
    """The job's script: the same environment on every start (a requeued job runs it again)."""
    root = str(Path(__file__).resolve().parent.parent)  # where `engine` is importable from
    lines = [
        "#!/bin/bash",
        "# An mtp engine submitted by `mtp engine submit`; SLURM runs this again when it requeues the job.",
        f"export MTP_HOME={shlex.quote(str(home.root))}",
        f"export MTP_DB_URL={shlex.quote(db_url)}",
        f'export PYTHONPATH={shlex.quote(root)}"${{PYTHONPATH:+:$PYTHONPATH}}"',
    ]
    lines += [
        'echo "mtp: job ${SLURM_JOB_ID} on $(hostname), start $(( ${SLURM_RESTART_COUNT:-0} + 1 )), $(date -u +%FT%TZ)"',
        # The engine is a job step (srun), so signals sent to the job's steps reach it
        # (`scancel --signal=USR1 JOB`), and srun is the batch shell (exec), which forwards what
        # reaches that (the B:USR1 warning, `scancel --batch`). A step gets the job's GPUs and,
        # through SLURM_CPUS_PER_GPU, its CPUs; CPU engines name theirs (srun ignores
        # SLURM_CPUS_PER_TASK since SLURM 22.05).
        "exec "
        + shlex.join(srun_argv(req) + engine_argv(req, home))
        # --demo alone means the demo folder's own SQLite file (store.entrypoint): a submitted
        # demo engine serves the cluster's database, named here from the environment so the
        # URL stays out of sbatch's command line.
        + (' --db "$MTP_DB_URL"' if req.demo else ""),
        "",
    ]
    return "\n".join(lines)


def submit(home: Home, db_url: str | None, home_id: str, req: SubmitRequest) -> list[str]:
    """Submit ``req.count`` engine jobs; returns their job ids. SlurmError says why not (with the
    ids of any submitted before a refusal in ``.submitted``)."""
    req.check()
    check_database(db_url)
    assert db_url is not None
    name = job_name(home_id)
    home.logs.mkdir(parents=True, exist_ok=True)
    cmd = sbatch_command(req, home, name)
    script = batch_script(req, home, db_url)
    ids: list[str] = []
    for _ in range(req.count):
        try:
            out = _run(cmd, input=script)
        except SlurmError as exc:
            raise SlurmError(str(exc), ids) from None
        if out.returncode != 0:
            why = (out.stderr or out.stdout).strip() or f"exit code {out.returncode}"
            raise SlurmError(f"sbatch refused the job: {why}", ids)
        # --parsable prints "<id>" or "<id>;<cluster>"
        ids.append(out.stdout.strip().splitlines()[-1].split(";")[0])
    return ids


# ------------------------------------------------------------------ jobs of a data folder
@dataclass(frozen=True)
class Job:
    job_id: str
    state: str  # PENDING, RUNNING, COMPLETING, ...
    elapsed: str
    time_limit: str
    partition: str
    nodes: str
    reason: str


def list_jobs(home_id: str) -> list[Job]:
    """This data folder's engine jobs that SLURM still knows (pending, running, completing)."""
    out = _run(
        ["squeue", "--noheader", f"--name={job_name(home_id)}", f"--format={_SQUEUE_FORMAT}"]
    )
    if out.returncode != 0:
        raise SlurmError(f"squeue failed: {(out.stderr or out.stdout).strip()}")
    jobs = []
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 7:
            jobs.append(Job(*parts))
    return jobs


def cancel_jobs(
    home_id: str, job_ids: Sequence[str] | None = None, wait_s: float = 0.0
) -> list[str]:
    """scancel this data folder's engine jobs (all, or those of ``job_ids``); their engines get
    SIGTERM and give their runs back. With ``wait_s``, wait until SLURM no longer lists them.
    Returns the ids cancelled."""
    jobs = list_jobs(home_id)
    ours = [j.job_id for j in jobs]
    if job_ids is not None:
        unknown = [j for j in job_ids if j not in ours]
        if unknown:
            raise SlurmError(
                f"job(s) {', '.join(unknown)}: not an engine job of this data folder "
                f"that SLURM lists (`mtp engine jobs` shows them)"
            )
        ours = list(job_ids)
    if not ours:
        return []
    out = _run(["scancel", *ours])
    if out.returncode != 0:
        raise SlurmError(f"scancel failed: {(out.stderr or out.stdout).strip()}")
    deadline = time.monotonic() + wait_s
    while wait_s and time.monotonic() < deadline:
        if not {j.job_id for j in list_jobs(home_id)} & set(ours):
            break
        time.sleep(0.5)
    return ours
