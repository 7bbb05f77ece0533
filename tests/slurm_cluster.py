"""A throwaway one-node SLURM cluster for the tests: a private munged (its own key and socket),
slurmctld and slurmd with a private slurm.conf in a temp folder, unused ports, one node with two
CPUs and two stand-in GPUs (GPU GRES backed by plain files: jobs are scheduled and given GPUs as
on a GPU node, and engines on the fake backend never touch them), everything stopped and removed
at the end.

Nothing system-wide is touched (no /etc/munge, no /etc/slurm): client commands find the cluster
through $SLURM_CONF, which `SlurmCluster.env()` gives. slurmd must be root to start jobs, so the
cluster is only brought up as root (CI runs as root); jobs then run as root too.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol")
PARTITION = "debug"


class NoCluster(RuntimeError):
    """SLURM or munge is missing here (the message says how to get them)."""


def _which(name: str) -> str | None:
    # Daemons live in sbin, which a minimal PATH may leave out.
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, cpus: int = 2, gpus: int = 2):
        missing = [b for b in BINARIES if _which(b) is None]
        if missing:
            raise NoCluster(
                f"SLURM/munge binaries not found ({', '.join(missing)}): install Debian's "
                "slurmctld, slurmd, slurm-client and munge packages"
            )
        if os.geteuid() != 0:
            raise NoCluster("slurmd must run as root to start jobs; run the SLURM tests as root")
        self.cpus = cpus
        self.gpus = gpus
        self.dir = Path(tempfile.mkdtemp(prefix="mtp-slurm-"))
        self.conf = self.dir / "slurm.conf"
        self.socket = self.dir / "munge.sock"
        self.node = socket.gethostname().split(".")[0]
        self._pids: list[Path] = []

    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def _run(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        env = dict(os.environ, **self.env())
        return subprocess.run(
            [_which(cmd[0]) or cmd[0], *cmd[1:]],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            **kw,
        )

    def start(self) -> SlurmCluster:
        d = self.dir
        os.chmod(d, 0o711)  # munged wants the socket's folder searchable
        for sub in ("state", "spool"):
            (d / sub).mkdir()
        key = d / "munge.key"
        self._check(self._run("mungekey", "--create", f"--keyfile={key}"), "mungekey")
        self._check(
            self._run(
                "munged",
                "--force",
                f"--socket={self.socket}",
                f"--key-file={key}",
                f"--pid-file={d / 'munged.pid'}",
                f"--log-file={d / 'munged.log'}",
                f"--seed-file={d / 'munged.seed'}",
            ),
            "munged",
        )
        self._pids.append(d / "munged.pid")
        user = pwd.getpwuid(os.geteuid()).pw_name
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=mtptest",
                    # Addresses given, so nothing depends on the host name resolving.
                    f"SlurmctldHost={self.node}(127.0.0.1)",
                    f"SlurmUser={user}",
                    f"SlurmdUser={user}",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    # cred_expire: SLURM holds a requeued job back this long (default 120 s)
                    f"AuthInfo=socket={self.socket},cred_expire=10",
                    # No cgroups in containers: plain process tracking, no task binding.
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "ReturnToService=2",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "MpiDefault=none",
                    "SchedulerParameters=sched_interval=1",
                    # The node's CPUs as written here, whatever the machine has (CI runners vary).
                    "SlurmdParameters=config_overrides",
                    # A cancelled engine has this long between SIGTERM and SIGKILL.
                    "KillWait=30",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    f"StateSaveLocation={d / 'state'}",
                    f"SlurmdSpoolDir={d / 'spool'}",
                    f"SlurmctldPidFile={d / 'slurmctld.pid'}",
                    f"SlurmdPidFile={d / 'slurmd.pid'}",
                    f"SlurmctldLogFile={d / 'slurmctld.log'}",
                    f"SlurmdLogFile={d / 'slurmd.log'}",
                    # Two stand-in GPUs (plain files): jobs get GPU GRES and CUDA_VISIBLE_DEVICES
                    # as on a GPU node; engines on the fake backend never touch them.
                    "GresTypes=gpu",
                    f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=20000 "
                    f"Gres=gpu:{self.gpus} State=UNKNOWN",
                    f"PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        for i in range(self.gpus):
            (d / f"gpu{i}").touch()
        (d / "gres.conf").write_text(
            f"AutoDetect=off\nName=gpu File={d / 'gpu'}[0-{self.gpus - 1}]\n"
        )
        self._check(self._run("slurmctld", "-f", str(self.conf)), "slurmctld")
        self._pids.append(d / "slurmctld.pid")
        self._check(self._run("slurmd", "-f", str(self.conf)), "slurmd")
        self._pids.append(d / "slurmd.pid")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = self._run("sinfo", "--noheader", "--format=%t")
            if out.returncode == 0 and out.stdout.strip() == "idle":
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the test SLURM node never became idle; logs in {d}")

    def _check(self, out: subprocess.CompletedProcess, what: str) -> None:
        if out.returncode != 0:
            self.stop()
            raise RuntimeError(f"{what} failed: {out.stderr or out.stdout}")

    def squeue(self) -> list[str]:
        """Every job the cluster lists, as `<id> <state>` lines."""
        out = self._run("squeue", "--noheader", "--format=%i %T")
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]

    def cancel_all(self, wait_s: float = 60) -> None:
        """Cancel every job and wait until none is listed (their engines exited)."""
        ids = [line.split()[0] for line in self.squeue()]
        if ids:
            self._run("scancel", *ids)
        deadline = time.monotonic() + wait_s
        while self.squeue() and time.monotonic() < deadline:
            time.sleep(0.3)

    def stop(self) -> None:
        for pid_file in reversed(self._pids):  # slurmd, slurmctld, munged
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError, IndexError):
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        self._pids = []
        shutil.rmtree(self.dir, ignore_errors=True)
