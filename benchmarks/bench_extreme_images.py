"""Peak memory of an engine scoring a batch whose concept holds the worst image the input
check accepts, next to the same batch with normal reference images.

Each case runs in a fresh subprocess (peak RSS, ru_maxrss, is per process and never goes
down): load the tiny offline CLIP/DINO (engine/tiny_clip.py), warm them up on small images,
then do what the worker does for a batch: check each reference image (store.images), score 8
generated 512x512 targets against the references and the source. Printed per case: peak RSS
after the warm-up, peak RSS after scoring, and the ratio of each case's peak to the normal one.

Cases (references; the targets and the source are the same everywhere):
- normal: three 1024x1024 PNG photos (noise, so nothing compresses away);
- widest-png: one 23168x2896 RGBA PNG, 8:1 at the 64-megapixel cap (PNG decodes in full);
- widest-jpeg: the same pixels as a JPEG (decoded at a reduced scale);
- phone-jpeg: a 12-megapixel phone photo, 4032x3024 (within 4096: read untouched);
- thinnest: 128x16, the narrowest accepted sliver;
- refused: 30000x1, which used to pass the pixel cap (now refused by its header alone).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_extreme_images.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = ("normal", "widest-png", "widest-jpeg", "phone-jpeg", "thinnest", "refused")


def _noise(w: int, h: int, seed: int, mode: str = "RGB"):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    # Noise at 1/8 scale, enlarged: photo-like file sizes, and cheap to make at 64 megapixels.
    small = rng.integers(0, 255, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h)).convert(mode)


def make_inputs(folder: Path) -> dict[str, list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[Path]] = {"normal": []}
    for i in range(3):
        p = folder / f"normal{i}.png"
        _noise(1024, 1024, i).save(p)
        out["normal"].append(p)
    from store.images import MAX_ASPECT, MAX_IMAGE_PIXELS

    h = int((MAX_IMAGE_PIXELS / MAX_ASPECT) ** 0.5)
    w = MAX_ASPECT * h
    wide = _noise(w, h, 7, "RGBA")
    wide.save(folder / "widest.png", compress_level=1)
    wide.convert("RGB").save(folder / "widest.jpg", quality=90)
    del wide
    _noise(4032, 3024, 8).save(folder / "phone.jpg", quality=90)
    _noise(128, 16, 9).save(folder / "thin.png")
    _noise(30000, 1, 10).save(folder / "refused.png")
    out["widest-png"] = [folder / "widest.png"]
    out["widest-jpeg"] = [folder / "widest.jpg"]
    out["phone-jpeg"] = [folder / "phone.jpg"]
    out["thinnest"] = [folder / "thin.png"]
    out["refused"] = [folder / "refused.png"]
    return out


def child(home: str, refs: list[str]) -> None:
    import resource
    import time

    import torch

    torch.set_num_threads(1)
    from engine.scoring import Scorer
    from store.images import image_problem
    from store.paths import Home

    def peak_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    scorer = Scorer.for_home(Home.resolve(home), demo=True)
    warm = _noise(64, 64, 99)
    scorer.score([warm, warm], ["warm up"], warm, [])
    idle = peak_mib()
    t0 = time.perf_counter()
    good, refused = [], []
    for r in refs:  # what the worker's _refs does before scoring
        problem = image_problem(r)
        (refused if problem else good).append(problem or r)
    targets = [_noise(512, 512, 100 + i) for i in range(8)]
    source = _noise(512, 512, 200)
    scores = scorer.score(targets, ["a photo of a dog"] * 8, source, good) if good else []
    print(
        json.dumps(
            {
                "idle_mib": idle,
                "peak_mib": peak_mib(),
                "seconds": time.perf_counter() - t0,
                "refused": refused,
                "scored": sum(1 for s in scores if s),
            }
        )
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_inputs(Path(tmp) / "inputs")
        from engine.tiny_clip import ensure_tiny_clip, ensure_tiny_dino
        from store.paths import Home

        home = Home.resolve(Path(tmp) / "home")
        ensure_tiny_clip(home.models)  # built once, outside the measured processes
        ensure_tiny_dino(home.models)
        rows = {}
        for case in CASES:
            files = [str(p) for p in inputs[case]]
            res = subprocess.run(
                [sys.executable, __file__, "--child", str(home.root), *files],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            rows[case] = json.loads(res.stdout.strip().splitlines()[-1])
        base = rows["normal"]["peak_mib"]
        print(f"{'case':<12} {'idle MiB':>9} {'peak MiB':>9} {'x normal':>9} {'seconds':>8}  notes")
        for case, r in rows.items():
            note = f"refused: {r['refused'][0]}" if r["refused"] else f"{r['scored']} scored"
            print(
                f"{case:<12} {r['idle_mib']:>9.0f} {r['peak_mib']:>9.0f} "
                f"{r['peak_mib'] / base:>9.2f} {r['seconds']:>8.2f}  {note}"
            )


if __name__ == "__main__":
    main()
