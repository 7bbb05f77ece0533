"""Cost of the set methods against plain generation of the same set (tiny SDXL model).

Per method: seconds per image and peak memory, next to plain generation of the same prompts
from the same latents, each measured in its own child process (CPU: peak resident memory
during generation above the process's peak before it; CUDA: torch's peak allocation).
Goals (issue): consistent_sa <= 1.3x plain; consistory without injection <= 1.6x, with
injection <= 2.7x; memory <= 1.5x plain at the same batch. Medians over --reps children,
interleaved so the machine's load hits every method alike.

    OMP_NUM_THREADS=1 python benchmarks/bench_methods.py [--reps 3] [--size 128] [--steps 20] [--n 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

METHODS = {
    "plain": ("plain", {}),
    "consistent_sa": ("consistent_sa", {}),
    "consistory (no injection)": ("consistory", {"inject": False}),
    "consistory (injection)": ("consistory", {"inject": True}),
}
GOALS = {"consistent_sa": 1.3, "consistory (no injection)": 1.6, "consistory (injection)": 2.7}
PROMPTS = [
    "a corgi on a beach",
    "a corgi in the snow",
    "a corgi reading a book",
    "a corgi in a forest",
    "a corgi in a kitchen",
    "a corgi on a boat",
]


def _peak_rss_bytes() -> int:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * (1 if sys.platform == "darwin" else 1024)


def child(args) -> None:
    import torch

    from engine.methods import generate_set
    from engine.tiny_sdxl import ensure_tiny_sdxl_pipeline, load_tiny_sdxl_pipeline

    torch.set_num_threads(1)
    pipe = load_tiny_sdxl_pipeline(ensure_tiny_sdxl_pipeline(args.models)).to(args.device)
    method, params = METHODS[args.child]
    prompts = PROMPTS[: args.n]
    lat = torch.randn(
        args.n, 4, args.size // 8, args.size // 8, generator=torch.Generator().manual_seed(0)
    )

    def run(steps):
        return generate_set(
            pipe,
            prompts,
            method=method,
            params=params,
            subject_words=["corgi"],
            seed=0,
            num_steps=steps,
            guidance=5.0,
            latents=lat,
            decode=False,
        )

    run(2)  # warm-up: first-call costs are not the method's
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _peak_rss_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    run(args.steps)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        seconds = time.perf_counter() - t0
    else:
        peak = max(0, _peak_rss_bytes() - base)
        seconds = time.process_time() - c0  # one thread: CPU time, not the neighbours' load
    print(json.dumps({"seconds_per_image": seconds / args.n, "peak_bytes": peak}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", choices=list(METHODS), help=argparse.SUPPRESS)
    ap.add_argument("--models", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    results: dict[str, list[dict]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        from engine.tiny_sdxl import ensure_tiny_sdxl_pipeline

        ensure_tiny_sdxl_pipeline(tmp)
        for _ in range(args.reps):
            for name in METHODS:
                cmd = [sys.executable, __file__, "--child", name, "--models", tmp]
                for flag in ("size", "steps", "n", "device"):
                    cmd += [f"--{flag}", str(getattr(args, flag))]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                results[name].append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"tiny SDXL, {args.n} images of {args.size}px, {args.steps} steps, {args.device}, "
        f"median of {args.reps}"
    )
    plain_s = statistics.median(r["seconds_per_image"] for r in results["plain"])
    plain_m = statistics.median(r["peak_bytes"] for r in results["plain"])
    for name, rows in results.items():
        s = statistics.median(r["seconds_per_image"] for r in rows)
        m = statistics.median(r["peak_bytes"] for r in rows)
        goal = f" (goal <= {GOALS[name]}x)" if name in GOALS else ""
        mem_ratio = f"{m / plain_m:.2f}x" if plain_m else "n/a"
        print(
            f"{name:28s} {s:8.3f} s/image  {s / plain_s:5.2f}x{goal:18s} "
            f"peak {m / 2**20:8.1f} MiB  {mem_ratio} (goal <= 1.5x)"
        )


if __name__ == "__main__":
    main()
