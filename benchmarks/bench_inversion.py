"""Seconds per inverted image vs per generated image on the tiny SD and SDXL models (CPU, one thread).

Per model, interleaved and repeated in one process (medians of process CPU time):
  generate    one generated image: generate(Source(prompt), []) at guidance 7.5, decoded
  invert@1    DDIM inversion of one reference image at inversion guidance 1 (no CFG)
  invert@7.5  the same at 7.5 (a doubled UNet batch, as MasaCtrl's notebook inverts)
  inv+gen@1   a generation whose source is that inverted image (what a run with a real source costs)
Ratios are against `generate` of the same model.

    OMP_NUM_THREADS=1 python benchmarks/bench_inversion.py [--reps 5] [--size 64] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from engine.inversion import invert  # noqa: E402
from engine.pipeline import Source, generate  # noqa: E402
from engine.tiny import build_tiny_pipeline, load_tiny_pipeline  # noqa: E402
from engine.tiny_sdxl import build_tiny_sdxl_pipeline, load_tiny_sdxl_pipeline  # noqa: E402

PROMPT = "a photo of a corgi"


def _timed(fn) -> float:
    # CPU time of this single-threaded process: wall time on a shared machine measures the neighbours
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def bench(name: str, pipe, image: str, args) -> None:
    common = dict(seed=0, num_steps=args.steps, guidance=7.5, height=args.size, width=args.size)
    cases = {
        "generate": lambda: generate(pipe, Source(PROMPT), [], **common),
        "invert@1": lambda: invert(
            pipe, image, PROMPT, args.steps, guidance=1.0, height=args.size, width=args.size
        ),
        "invert@7.5": lambda: invert(
            pipe, image, PROMPT, args.steps, guidance=7.5, height=args.size, width=args.size
        ),
        "inv+gen@1": lambda: generate(pipe, Source(PROMPT, image=image, invert=True), [], **common),
    }
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.reps):
        for k, fn in cases.items():
            times[k].append(_timed(fn))
    base = statistics.median(times["generate"])
    print(
        f"{name}: {args.size}x{args.size}, {args.steps} steps, {args.reps} reps (median CPU seconds)"
    )
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"  {k:<11} {med:7.3f} s/image   {med / base:5.2f}x generate")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        image = os.path.join(tmp, "ref.png")
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)).save(image)
        sd = load_tiny_pipeline(build_tiny_pipeline(os.path.join(tmp, "tiny-sd")))
        bench("tiny SD (16 blocks)", sd, image, args)
        xl = load_tiny_sdxl_pipeline(build_tiny_sdxl_pipeline(os.path.join(tmp, "tiny-sdxl")))
        bench("tiny SDXL (70 blocks)", xl, image, args)


if __name__ == "__main__":
    main()
