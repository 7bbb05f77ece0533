"""Cost of mutual self-attention control on the tiny pipeline (CPU, one thread).

1. Overhead of installed-but-inactive control against the stock pipeline, same batch
   (goal <= 1.05x).
2. An 8-config control sweep sharing one source in one batch against 8 separate
   [source, target] calls (goal <= 0.65x; 9/16 = 0.5625 is the batch-size ideal).

Pairs are interleaved in one process and repeated; medians of process CPU time (torch runs
on one thread) and their ratios are printed.

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
    # CPU time of this (single-threaded) process: wall time on a shared machine mostly
    # measures the neighbours
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


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
    common = dict(
        seed=0, num_steps=args.steps, height=args.size, width=args.size, latents=noise, decode=False
    )
    prompts = [SOURCE] + [TARGET] * len(SWEEP)

    @torch.no_grad()
    def stock():
        remove_control(pipe.unet)
        pipe(
            prompt=prompts,
            num_inference_steps=args.steps,
            height=args.size,
            width=args.size,
            latents=noise.expand(len(prompts), -1, -1, -1).clone(),
            output_type="latent",
        )

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
    pairs = (
        (("stock", stock), ("inactive", inactive)),
        (("batched", batched), ("separate", separate)),
    )
    for rep in range(args.reps):
        for pair in pairs:
            # alternate which side of a pair runs first, so drift on a shared machine cancels
            for name, fn in pair if rep % 2 == 0 else pair[::-1]:
                times[name].append(_timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    print(
        f"tiny SD, {args.size}x{args.size}, {args.steps} DDIM steps, CFG, batch of 1 source + {len(SWEEP)} targets, "
        f"{args.reps} interleaved reps, torch threads={torch.get_num_threads()}, CPU time"
    )
    for k in times:
        print(f"  {k:9s} median {med[k] * 1000:8.1f} ms   min {low[k] * 1000:8.1f} ms")
    for label, a, b, goal in (
        ("inactive control / stock pipeline  ", "inactive", "stock", "goal <= 1.05"),
        (
            "8-config sweep, one batch / 8 calls",
            "batched",
            "separate",
            f"goal <= 0.65, ideal {9 / 16:.4f}",
        ),
    ):
        print(f"{label}: median {med[a] / med[b]:.3f}x   min {low[a] / low[b]:.3f}x   ({goal})")
    _wrapper_overhead(pipe, side)


@torch.no_grad()
def _wrapper_overhead(pipe, side: int, calls: int = 2000) -> None:
    """Direct cost of one armed-but-inactive wrapper call, which whole-run timings on a shared machine
    cannot resolve: the same attention module called with and without the wrapper."""
    from engine.processors import RowControl, block_paths, install_control

    controller = install_control(pipe.unet)
    # armed, with a target whose schedule never hits: the per-call planning work is done
    controller.arm(
        [None, RowControl(steps=frozenset({10**6}), layers=frozenset({0}))],
        cfg=False,
        latent_size=(side, side),
    )
    attn = pipe.unet.get_submodule(block_paths(pipe.unet)[0] + ".attn1")
    wrapper = attn.processor
    hs = torch.randn(2, 4, attn.to_q.in_features)  # tiny input: the fixed cost dominates
    per_call = {}
    for name, proc in (("stock", wrapper.original), ("wrapped", wrapper)) * 3:
        attn.set_processor(proc)
        t0 = time.process_time()
        for _ in range(calls):
            attn(hs)
        per_call[name] = min(per_call.get(name, float("inf")), (time.process_time() - t0) / calls)
    attn.set_processor(wrapper)
    controller.disarm()
    extra = max(per_call["wrapped"] - per_call["stock"], 0.0)
    t0 = time.process_time()
    pipe.unet(torch.randn(18, 4, side, side), 500, encoder_hidden_states=torch.randn(18, 77, 32))
    unet_call = time.process_time() - t0
    n_attn = len(pipe.unet.attn_processors)
    print(
        f"attention call on a tiny input: stock {per_call['stock'] * 1e6:.1f} us, "
        f"wrapped, armed, inactive {per_call['wrapped'] * 1e6:.1f} us"
    )
    print(
        f"inactive wrapper: +{extra * 1e6:.1f} us per attention call x {n_attn} calls = "
        f"{extra * n_attn * 1e3:.2f} ms per UNet call of {unet_call * 1e3:.0f} ms "
        f"({extra * n_attn / unet_call * 100:.2f}% overhead)"
    )


if __name__ == "__main__":
    main()
