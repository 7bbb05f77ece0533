"""Scoring throughput on CPU with the tiny offline backbones, and rescoring without regeneration.

1. Images scored per second by engine.scoring.Scorer (CLIP-T, CLIP-I, DINO against 3 refs and
   a source), against the bare encoder forwards on the same images in the same process: the
   ratio is the scorer's own overhead (preprocessing, caches, bookkeeping).
2. `mtp score` on an experiment of N runs (default 1,000) whose images were made by the fake
   backend with --no-score: the engine side (engine.rescore.Rescorer: query, read PNGs, score,
   write rows per batch), against scoring the same images held in memory.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scoring.py [--images 128] [--runs 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time


def _noise(seed: int, size: int = 64):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--runs", type=int, default=1000)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from engine.backends.fake import FakeBackend
    from engine.rescore import Rescorer
    from engine.scoring import Scorer, scored_text
    from engine.worker import Worker, WorkerConfig
    from store import queue as q
    from store.db import Store
    from store.paths import Home
    from store.queries import save_concept, save_experiment
    from store.scoring import request_scoring
    from store.sweep.spec import ExperimentSpec

    with tempfile.TemporaryDirectory() as tmp:
        home = Home.resolve(tmp)
        scorer = Scorer.for_home(home, demo=True)
        refs = []
        for i in range(3):
            refs.append(home.root / f"ref{i}.png")
            _noise(1000 + i).save(refs[-1])
        images = [_noise(i) for i in range(args.images)]
        source = _noise(999)
        scorer.score(images[:2], ["warm up"], source, refs)

        # ---- 1. images per second, scorer vs bare forwards (best of 3 each, interleaved)
        def bare_pass() -> float:
            t = time.perf_counter()
            for k in range(0, len(images), 32):
                with torch.no_grad():
                    b = torch.stack([scorer.clip_preprocess(im) for im in images[k : k + 32]])
                    scorer.clip.encode_image(b)
                    d = torch.stack([scorer.dino_preprocess(im) for im in images[k : k + 32]])
                    scorer.dino(pixel_values=d)
            return time.perf_counter() - t

        def scorer_pass() -> float:
            t = time.perf_counter()
            scorer.score(
                images, [f"a photo of a dog {i % 8}" for i in range(len(images))], source, refs
            )
            return time.perf_counter() - t

        bare, full = float("inf"), float("inf")
        for _ in range(3):
            bare, full = min(bare, bare_pass()), min(full, scorer_pass())
        print(
            f"scorer: {len(images) / full:.1f} images/s (5 metrics each); bare CLIP+DINO forwards: "
            f"{len(images) / bare:.1f} images/s; scorer/bare time ratio {full / bare:.2f}"
        )

        # ---- 2. rescoring N existing runs without regeneration
        store = Store(home)
        concept = save_concept(store, "dog", token="sks", class_word="dog", ref_images=refs)
        seeds = max(1, args.runs // 10)
        spec = ExperimentSpec(
            model="fake",
            source_prompt="a photo of sks dog",
            target_prompts=["a sks dog running"],
            num_steps=1,
            width=64,
            height=64,
            seeds=f"0-{seeds - 1}",
            start_step="0",
            final_step="1",
            layers="0,1,2,3,4,5,6,7,8,9",
            baseline=False,
        )
        exp = save_experiment(store, "bench", spec, concept_id=concept.id, queue=True)
        t = time.perf_counter()
        Worker(
            store,
            FakeBackend(),
            WorkerConfig(once=True, heartbeat_s=1.0, max_batch=10),
            worker_id="gen",
        ).run()
        print(f"generated {exp.run_count} fake runs (no scores) in {time.perf_counter() - t:.1f}s")

        q.register_worker(store, "cpu", "bench-scorer")
        rescorer = Rescorer(store, "bench-scorer", lambda families: scorer, scored_text)
        request_scoring(store, exp.id)
        t = time.perf_counter()
        rescorer.run_one()
        rescore_s = time.perf_counter() - t
        # The same images and sources, already in memory: only the scoring itself.
        from PIL import Image
        from sqlmodel import select

        from store.models import Run

        with store.session() as s:
            runs = list(s.exec(select(Run).where(Run.experiment_id == exp.id).order_by(Run.id)))
        loaded = [Image.open(home.resolve_artifact(r.image_path)).convert("RGB") for r in runs]
        src = Image.open(home.resolve_artifact(runs[0].source_image_path)).convert("RGB")
        fresh = Scorer.for_home(home, demo=True)
        t = time.perf_counter()
        for k in range(0, len(loaded), 32):
            fresh.score(loaded[k : k + 32], ["a dog running"], src, refs)
        memory_s = time.perf_counter() - t
        print(
            f"rescore of {len(runs)} runs without regeneration: {rescore_s:.1f}s "
            f"({len(runs) / rescore_s:.1f} runs/s); same scoring from memory {memory_s:.1f}s; "
            f"rescore/memory ratio {rescore_s / memory_s:.2f}"
        )
        store.close()


if __name__ == "__main__":
    main()
