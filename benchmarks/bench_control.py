"""Cost of mutual self-attention control on the tiny pipeline (CPU, one thread).

1. Overhead of installed-but-inactive control against the stock pipeline, same batch
   (goal <= 1.05x).
2. An 8-config control sweep sharing one source in one batch against 8 separate
   [source, target] calls (goal <= 0.65x; 9/16 = 0.5625 is the batch-size ideal).

Pairs are interleaved in one process and repeated; medians and their ratios are printed.

    OMP_NUM_THREADS=1 python benchmarks/bench_control.py [--reps 7] [--size 128] [--steps 10]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from engine.control import ControlSpec  # noqa: E402
from engine.pipeline import Source, Target, generate  # noqa: E402
from engine.processors import remove_control  # noqa: E402
from engine.tiny import build_tiny_pipeline, load_tiny_pipeline  # noqa: E402

SOURCE = "a photo of a corgi"
TARGET = "a corgi running on the beach"
SWEEP = [
    ControlSpec(layers=layers, start_step=start, final_step=final)
    for layers in ("encoder", "decoder")
    for start, final in ((2, None), (2, 6), (4, None), (4, 8))
]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        pipe = load_tiny_pipeline(build_tiny_pipeline(os.path.join(tmp, "tiny-sd")))
    side = args.size // pipe.vae_scale_factor
    noise = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(0))
    common = dict(seed=0, num_steps=args.steps, height=args.size, width=args.size, latents=noise, decode=False)
    prompts = [SOURCE] + [TARGET] * len(SWEEP)

    @torch.no_grad()
    def stock():
        remove_control(pipe.unet)
        pipe(prompt=prompts, num_inference_steps=args.steps, height=args.size, width=args.size,
             latents=noise.expand(len(prompts), -1, -1, -1).clone(), output_type="latent")

    def inactive():
        generate(pipe, Source(SOURCE), [Target(TARGET, None)] * len(SWEEP), **common)

    def batched():
        generate(pipe, Source(SOURCE), [Target(TARGET, s) for s in SWEEP], **common)

    def separate():
        for s in SWEEP:
            generate(pipe, Source(SOURCE), [Target(TARGET, s)], **common)

    for fn in (stock, inactive, batched, separate):  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in ("stock", "inactive", "batched", "separate")}
    for _ in range(args.reps):
        times["stock"].append(_timed(stock))
        times["inactive"].append(_timed(inactive))
        times["batched"].append(_timed(batched))
        times["separate"].append(_timed(separate))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"tiny SD, {args.size}x{args.size}, {args.steps} DDIM steps, CFG, batch of 1 source + {len(SWEEP)} targets, "
          f"{args.reps} interleaved reps, torch threads={torch.get_num_threads()}")
    for k, v in med.items():
        print(f"  median {k:9s} {v * 1000:8.1f} ms")
    print(f"inactive control / stock pipeline : {med['inactive'] / med['stock']:.3f}x (goal <= 1.05)")
    print(f"8-config sweep, one batch / 8 calls: {med['batched'] / med['separate']:.3f}x "
          f"(goal <= 0.65, ideal {9 / 16:.4f})")


if __name__ == "__main__":
    main()
