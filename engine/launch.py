"""Start, find and stop detached engines (torch-free: the TUI and `mtp engine` import it).

An engine started here runs in its own session with stdin closed and output in its log file,
so closing the terminal, the SSH connection or the TUI does not stop it. One engine per device:
the engine holds an exclusive flock on home/engine-<host>-<device>.lock (with its pid written
inside) for its whole life; the kernel drops the lock when the process dies, so a stale lock file
never blocks a restart. Device names are normalised first (`cuda` is `cuda:0`, `cpu:0` is `cpu`),
so two spellings of one GPU take one lock; the host is in the name because a data folder may be
shared between machines, each with its own cuda:0.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from store.paths import Home

from .errors import EngineError  # start/stop problems are engine errors


class EngineAlreadyRunning(EngineError):
    pass


def normalize_device(device: str | None) -> str:
    """One spelling per device: `cuda`/`CUDA:00`/`0` -> `cuda:0`, `cpu:0` -> `cpu`, `cuda:1` stays."""
    d = (device or "").strip().lower()
    if not d:
        return "cpu"
    if d.isdigit():
        return f"cuda:{int(d)}"
    kind, sep, index = d.partition(":")
    if sep and not index.isdigit() or not re.fullmatch(r"[a-z][a-z0-9_]*", kind):
        raise EngineError(f"device {device!r}: expected a torch device such as cuda:0, cuda or cpu")
    index = str(int(index)) if index else "0"
    if kind in ("cpu", "mps"):  # torch has one of each; index 0 is the device itself
        return kind if index == "0" else f"{kind}:{index}"
    return f"{kind}:{index}"


def device_slug(device: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "", normalize_device(device).replace(":", "")) or "cpu"


def host_slug(host: str | None = None) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "", host or socket.gethostname()) or "host"


def _home(home: Home | str | os.PathLike | None) -> Home:
    return home if isinstance(home, Home) else Home.resolve(home)


def _job_slug(job: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "", job or "")


def lock_path(
    home: Home | str | os.PathLike | None,
    device: str,
    host: str | None = None,
    job: str | None = None,
) -> Path:
    # Inside a SLURM job the lock is the job's: two one-GPU jobs on one node both see their GPU
    # as cuda:0 (SLURM renumbers CUDA_VISIBLE_DEVICES), and the scheduler already keeps them apart.
    suffix = f"-job{_job_slug(job)}" if job else ""
    return _home(home).root / f"engine-{host_slug(host)}-{device_slug(device)}{suffix}.lock"


def log_path(home: Home | str | os.PathLike | None, device: str, job: str | None = None) -> Path:
    if job:  # the job's own output file (sbatch --output), so one job has one log
        return _home(home).logs / f"slurm-{_job_slug(job)}.log"
    # The host too: hosts sharing one data folder must not write into one log.
    return _home(home).logs / f"engine-{host_slug()}-{device_slug(device)}.log"


class DeviceLock:
    """The exclusive per-device lock an engine holds while it runs."""

    def __init__(self, home: Home | str | os.PathLike | None, device: str, job: str | None = None):
        self.device = normalize_device(device)
        self.job = job
        self.path = lock_path(home, self.device, job=job)
        self.fd: int | None = None

    def _info(self, **extra) -> bytes:
        info = {"pid": os.getpid(), "device": self.device, "started": time.time(), **extra}
        if self.job:
            info["job"] = self.job
        return json.dumps(info).encode()

    def acquire(self) -> DeviceLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            info = _read_info(self.path)
            raise EngineAlreadyRunning(
                f"an engine is already running on {self.device} (pid {info.get('pid', '?')}); "
                f"stop it first with `mtp engine stop --device {self.device}`"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, self._info())
        os.fsync(fd)
        self.fd = fd
        return self

    def mark_ready(self) -> None:
        """Say in the lock file that the engine passed its start checks (scorer loaded), so
        start_engine can tell a started engine from one about to refuse."""
        if self.fd is None:
            return
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, self._info(ready=True))
        os.fsync(self.fd)

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __enter__(self) -> DeviceLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_info(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _is_locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def engine_running(
    home: Home | str | os.PathLike | None = None, device: str | None = None
) -> list[dict]:
    """Engines running on this host for this home: [{device, pid, started, lock, log}]."""
    h = _home(home)
    prefix = f"engine-{host_slug()}-"
    paths = [lock_path(h, device)] if device else sorted(h.root.glob(f"{prefix}*.lock"))
    out = []
    for p in paths:
        if p.exists() and _is_locked(p):
            info = _read_info(p)
            dev = info.get("device") or p.stem[len(prefix) :]
            out.append(
                {
                    "device": dev,
                    "pid": int(info.get("pid", 0) or 0),
                    "started": info.get("started"),
                    "lock": str(p),
                    "log": str(log_path(h, dev, job=info.get("job"))),
                    "job": info.get("job"),
                }
            )
    return out


def engine_command(
    home: Home | str | os.PathLike | None,
    device: str = "cpu",
    demo: bool = False,
    extra_args: Sequence[str] = (),
) -> list[str]:
    cmd = [sys.executable, "-m", "engine.cli", "--home", str(_home(home).root), "--device", device]
    if demo:
        cmd.append("--demo")
    return cmd + list(extra_args)


def start_engine(
    home: Home | str | os.PathLike | None = None,
    device: str = "cpu",
    demo: bool = False,
    extra_args: Sequence[str] = (),
    wait_s: float = 10.0,
) -> int:
    """Start a detached engine on ``device`` and return its pid.

    Waits (up to ``wait_s``) until the engine holds its device lock and has passed its start
    checks (it marks the lock ready once its scorer loaded), so a caller that checks
    `engine_running` right after sees it; raises EngineError if it exits first (the log tail
    says why, e.g. missing scoring weights) or EngineAlreadyRunning if one already runs there.
    """
    h = _home(home)
    running = engine_running(h, device)
    if running:
        raise EngineAlreadyRunning(
            f"an engine is already running on {device} (pid {running[0]['pid']})"
        )
    logfile = log_path(h, device)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # `python -m engine.cli` must find the package even when started from elsewhere.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            engine_command(h, device, demo, extra_args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
            cwd=str(h.root),
        )
    # Reap it when it ends so a long-lived TUI does not collect zombies.
    threading.Thread(target=proc.wait, name=f"reap-engine-{proc.pid}", daemon=True).start()
    deadline = time.monotonic() + wait_s
    lock = lock_path(h, device)
    while time.monotonic() < deadline:
        info = _read_info(lock) if _is_locked(lock) else {}
        if info.get("pid") == proc.pid and info.get("ready"):
            return proc.pid
        if proc.poll() is not None:
            if proc.returncode == 0:
                return proc.pid  # it passed its checks and already finished (--once, nothing left)
            raise EngineError(
                f"the engine on {device} exited at once (code {proc.returncode}): "
                f"{tail(logfile, 5) or 'no output'}"
            )
        time.sleep(0.05)
    return proc.pid


def stop_engine(
    home: Home | str | os.PathLike | None = None,
    device: str | None = None,
    wait_s: float = 0.0,
    sig: int = signal.SIGTERM,
) -> list[int]:
    """SIGTERM the engine(s) holding a device lock; optionally wait until they released it.
    Engines of SLURM jobs are left to scancel (engine.slurm.cancel_jobs): the job is what ends."""
    stopped = []
    for e in engine_running(home, device):
        if e["pid"] > 0 and not e.get("job"):
            try:
                os.kill(e["pid"], sig)
                stopped.append(e["pid"])
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + wait_s
    while (
        wait_s
        and time.monotonic() < deadline
        and [e for e in engine_running(home, device) if not e.get("job")]
    ):
        time.sleep(0.1)
    return stopped


def tail(path: str | os.PathLike, lines: int = 20) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ------------------------------------------------------------------ one engine per GPU
def visible_gpus() -> list[str]:
    """The CUDA devices of this host, found without torch: $CUDA_VISIBLE_DEVICES if set, else
    nvidia-smi, else the driver's /proc entries."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        # CUDA renumbers visible devices from 0 whatever their physical ids.
        n = len([d for d in env.split(",") if d.strip() and d.strip() != "-1"])
        return [f"cuda:{i}" for i in range(n)]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if out.returncode == 0:
            return [f"cuda:{i}" for i, line in enumerate(out.stdout.splitlines()) if line.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    gpus = Path("/proc/driver/nvidia/gpus")
    return [f"cuda:{i}" for i in range(len(list(gpus.iterdir())))] if gpus.is_dir() else []


def parse_devices(text: str) -> list[str]:
    """`all`, or a comma list of devices (`cuda:0,cuda:1`, `0,1`, `cpu`), duplicates dropped."""
    items = [t.strip().lower() for t in (text or "").split(",") if t.strip()]
    if not items:
        raise EngineError("--devices: name at least one device (cuda:0,cuda:1) or `all`")
    if items == ["all"]:
        found = visible_gpus()
        if not found:
            raise EngineError(
                "--devices all: no CUDA device found on this host (no nvidia-smi, "
                "no /proc/driver/nvidia); name the devices, e.g. --devices cpu"
            )
        return found
    out: list[str] = []
    for item in items:
        dev = f"cuda:{item}" if item.isdigit() else item
        if not re.fullmatch(r"cuda(:\d+)?|cpu(:\d+)?|mps", dev):
            raise EngineError(f"--devices: {item!r} is not a device (cuda:0, 1, cpu or all)")
        dev = "cuda:0" if dev == "cuda" else dev
        if dev not in out:
            out.append(dev)
    return out


def start_engines(
    home: Home | str | os.PathLike | None,
    devices: Sequence[str],
    demo: bool = False,
    extra_args: Sequence[str] = (),
) -> tuple[dict[str, int], dict[str, str]]:
    """Start one detached engine per device; a device that fails does not stop the others.

    Returns ({device: pid} started, {device: why} not started)."""
    started: dict[str, int] = {}
    failed: dict[str, str] = {}
    for dev in devices:
        try:
            started[dev] = start_engine(home, device=dev, demo=demo, extra_args=extra_args)
        except EngineError as exc:
            failed[dev] = str(exc)
    return started, failed
